// Talking to the service: the API key (kept in sessionStorage, sent as Bearer), JSON calls
// that ask for a key on a 401, and the job's event stream read with fetch() (EventSource
// cannot send an Authorization header), resumed with Last-Event-ID when it drops.

const KEY_STORAGE = "swarm.apiKey";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly detail: string,
  ) {
    super(`${status}: ${detail}`);
  }
}

export function apiKey(): string | null {
  return sessionStorage.getItem(KEY_STORAGE);
}

export function forgetKey(): void {
  sessionStorage.removeItem(KEY_STORAGE);
}

function headers(extra: Record<string, string> = {}): Record<string, string> {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

let pendingKeyPrompt: Promise<void> | null = null;

/** Shows the key dialog (once, however many calls got a 401) and resolves when a key is set. */
function askForKey(reason: string): Promise<void> {
  if (pendingKeyPrompt) return pendingKeyPrompt;
  const dialog = document.getElementById("key-dialog") as HTMLDialogElement;
  const form = document.getElementById("key-form") as HTMLFormElement;
  const input = document.getElementById("key-input") as HTMLInputElement;
  (document.getElementById("key-reason") as HTMLElement).textContent = reason;
  input.value = "";
  pendingKeyPrompt = new Promise<void>((resolve) => {
    const onSubmit = (e: Event) => {
      e.preventDefault();
      const value = input.value.trim();
      if (!value) return;
      sessionStorage.setItem(KEY_STORAGE, value);
      form.removeEventListener("submit", onSubmit);
      dialog.close();
      pendingKeyPrompt = null;
      updateKeyButton();
      resolve();
    };
    form.addEventListener("submit", onSubmit);
  });
  if (!dialog.open) dialog.showModal();
  return pendingKeyPrompt;
}

export function updateKeyButton(): void {
  const button = document.getElementById("forget-key") as HTMLButtonElement | null;
  if (button) button.hidden = apiKey() === null;
}

async function detailOf(response: Response): Promise<string> {
  try {
    const body = (await response.json()) as { detail?: unknown };
    if (typeof body.detail === "string") return body.detail;
    return JSON.stringify(body.detail ?? body);
  } catch {
    return response.statusText;
  }
}

/** A JSON call; a 401 asks for a key (the service has keys) and tries again with it. */
export async function api<T>(path: string, init: RequestInit = {}): Promise<T> {
  for (;;) {
    const response = await fetch(path, {
      ...init,
      headers: headers({ Accept: "application/json", ...(init.headers as Record<string, string>) }),
    });
    if (response.status === 401) {
      const detail = await detailOf(response);
      if (apiKey()) forgetKey();
      await askForKey(
        apiKey() === null && detail.includes("required")
          ? "This service needs an API key."
          : `The service refused the key: ${detail}`,
      );
      continue;
    }
    if (!response.ok) throw new ApiError(response.status, await detailOf(response));
    if (response.status === 204) return undefined as T;
    return (await response.json()) as T;
  }
}

export interface StreamEvent {
  seq: number;
  type: string;
  job_id: string;
  ts: string;
  agent_id?: string;
  [key: string]: unknown;
}

export interface StreamHandlers {
  onEvents(events: StreamEvent[]): void;
  onState(state: "live" | "reconnecting" | "ended", detail?: string): void;
}

const TERMINAL = new Set(["job.completed", "job.failed", "job.cancelled"]);

/** Follows /jobs/{id}/events from `after`, reconnecting with Last-Event-ID until the job's
 * terminal event. Returns a function that stops it. */
export function followEvents(jobId: string, after: number, handlers: StreamHandlers): () => void {
  let lastSeq = after;
  let stopped = false;
  let controller: AbortController | null = null;
  let delay = 500;

  const run = async () => {
    while (!stopped) {
      controller = new AbortController();
      let ended = false;
      try {
        const response = await fetch(`/jobs/${encodeURIComponent(jobId)}/events`, {
          headers: headers({ Accept: "text/event-stream", "Last-Event-ID": String(lastSeq) }),
          signal: controller.signal,
          cache: "no-store",
        });
        if (response.status === 401) {
          await api(`/jobs/${encodeURIComponent(jobId)}?agents=false`); // asks for a key
          continue;
        }
        if (!response.ok || !response.body) throw new ApiError(response.status, await detailOf(response));
        handlers.onState("live");
        delay = 500;
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          const batch: StreamEvent[] = [];
          let cut: number;
          while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
            const event = parseBlock(block);
            if (event && event.seq > lastSeq) {
              lastSeq = event.seq;
              batch.push(event);
              if (TERMINAL.has(event.type)) ended = true;
            }
          }
          if (batch.length) handlers.onEvents(batch);
          if (ended) break;
        }
      } catch (error) {
        if (stopped) return;
        if (error instanceof ApiError && error.status === 404) {
          handlers.onState("ended", "not found");
          return;
        }
      }
      if (ended) {
        handlers.onState("ended");
        return;
      }
      if (stopped) return;
      handlers.onState("reconnecting", `resuming after event ${lastSeq}`);
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 5000);
    }
  };
  void run();
  return () => {
    stopped = true;
    controller?.abort();
  };
}

function parseBlock(block: string): StreamEvent | null {
  let data = "";
  for (const line of block.split(/\r?\n/)) {
    if (line.startsWith("data:")) data += line.slice(5).replace(/^ /, "") + "\n";
  }
  if (!data) return null; // a comment (": ping") or an id-only block
  try {
    return JSON.parse(data) as StreamEvent;
  } catch {
    return null;
  }
}

export type AgentStatus = "pending" | "running" | "completed" | "failed" | "skipped" | "cancelled";

export interface AgentSummary {
  id: string;
  kind: "agent" | "map" | "item" | "merge" | "spawned";
  parent: string | null;
  status: AgentStatus;
  model: string;
  depends_on: string[];
  attempts: number;
  total_tokens: number | null;
  cost_usd: number | null;
  latency_ms: number | null;
  error: string | null;
}

export interface Counts {
  pending: number;
  running: number;
  completed: number;
  failed: number;
  skipped: number;
  cancelled: number;
  total: number;
}

export interface Job {
  id: string;
  name: string;
  status: string;
  model: string;
  error: string | null;
  counts: Counts;
  usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number };
  cost_usd: number | null;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
}

export interface JobListItem {
  id: string;
  name: string;
  status: string;
  agents_total: number;
  created_at: string;
  finished_at: string | null;
  error: string | null;
}

/** One step of a tool-using agent's loop: a model answer, a tool call started, or its result. */
export interface TranscriptStep {
  seq: number;
  step: number;
  kind: string; // "model" | "tool_call" | "tool_result"
  call_id: string | null;
  tool: string | null;
  data: Record<string, unknown>;
  at: string;
}

export interface AgentDetail {
  id: string;
  kind: string;
  parent: string | null;
  status: AgentStatus;
  model: string;
  depends_on: string[];
  system_prompt: string | null;
  prompt: string | null;
  output: string | null;
  finish_reason: string | null;
  usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number } | null;
  cost_usd: number | null;
  attempts: number;
  rate_limited: number;
  latency_ms: number | null;
  last_error: string | null;
  retries: { attempt: number; reason: string; error: string; delay_s: number; ts: string }[];
  transcript?: TranscriptStep[];
  started_at: string | null;
  finished_at: string | null;
}

export const TERMINAL_JOB = new Set(["completed", "failed", "cancelled"]);
export const RETRYABLE_JOB = new Set(["failed", "cancelled"]);

export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

export function fmtCost(cost: number | null | undefined): string {
  if (cost === null || cost === undefined) return "—";
  return cost < 0.01 ? `$${cost.toFixed(4)}` : `$${cost.toFixed(2)}`;
}

export function fmtInt(n: number | null | undefined): string {
  return n === null || n === undefined ? "—" : n.toLocaleString("en-US");
}

export function fmtAge(iso: string): string {
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  if (s < 86400) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}
