// The transcript of a tool-using agent in the side panel: each step of its loop in order —
// the model's answers (its text, or the tool calls it asked for), each tool call as it
// started (tool, arguments, call id) and each result (ok or error, size, latency, content).
// Long texts are cut to CLIP characters with a button that shows the rest. Everything from
// the data is set as text, never as HTML.
import { el, fmtInt } from "./api";
import type { TranscriptStep } from "./api";

export const CLIP = 1500;

const str = (v: unknown): string => (typeof v === "string" ? v : v === null || v === undefined ? "" : JSON.stringify(v));
const num = (v: unknown): number | null => (typeof v === "number" && Number.isFinite(v) ? v : null);

/** Arguments as the model sent them (a JSON string), laid out when they parse. */
function pretty(args: unknown): string {
  const text = str(args);
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

/**
 * A text that is cut to CLIP characters, with a button to show it all. `opened` keeps the
 * texts shown whole across re-renders of the panel (it is redrawn as the agent moves on).
 */
function clipped(key: string, cls: string, text: string, opened: Set<string>): HTMLElement {
  const pre = el("pre", { class: `text ${cls}`, "data-text": cls });
  const box = el("div", { class: "clip" }, pre);
  if (text.length <= CLIP) {
    pre.textContent = text;
    return box;
  }
  const button = el("button", { class: "more", "data-expander": cls });
  const render = () => {
    const whole = opened.has(key);
    pre.textContent = whole ? text : `${text.slice(0, CLIP)}…`;
    pre.dataset.clipped = whole ? "false" : "true";
    button.textContent = whole ? "show less" : `show all (${fmtInt(text.length)} chars)`;
  };
  button.addEventListener("click", () => {
    if (opened.has(key)) opened.delete(key);
    else opened.add(key);
    render();
  });
  render();
  box.append(button);
  return box;
}

const fact = (name: string, value: string) => el("span", { class: "fact", "data-field": name }, value);

function modelStep(s: TranscriptStep, opened: Set<string>): HTMLElement[] {
  const facts: HTMLElement[] = [];
  const usage = s.data.usage as { total_tokens?: unknown } | undefined;
  const tokens = num(usage?.total_tokens);
  if (tokens !== null) facts.push(fact("tokens", `${fmtInt(tokens)} tok`));
  const latency = num(s.data.latency_ms);
  if (latency !== null) facts.push(fact("latency", `${Math.round(latency)} ms`));
  const finish = str(s.data.finish_reason);
  if (finish) facts.push(fact("finish", finish));
  const out: HTMLElement[] = [el("div", { class: "step-head" }, el("span", { class: "step-title" }, `model · step ${s.step}`), ...facts)];
  const content = str(s.data.content);
  if (content) out.push(clipped(`${s.seq}:content`, "content", content, opened));
  const calls = Array.isArray(s.data.tool_calls) ? (s.data.tool_calls as Record<string, unknown>[]) : [];
  if (calls.length) {
    const list = el("ul", { class: "requests" });
    for (const c of calls) {
      list.append(
        el(
          "li",
          { class: "request", "data-call-id": str(c.call_id), "data-tool": str(c.name) },
          el("span", { class: "tool-name" }, str(c.name)),
          el("code", { class: "args" }, str(c.arguments)),
        ),
      );
    }
    out.push(el("div", { class: "asks" }, `asks for ${calls.length} tool call${calls.length === 1 ? "" : "s"}:`), list);
  }
  if (!content && !calls.length) out.push(el("p", { class: "muted" }, "(no text)"));
  return out;
}

function toolCall(s: TranscriptStep, opened: Set<string>): HTMLElement[] {
  return [
    el(
      "div",
      { class: "step-head" },
      el("span", { class: "step-title" }, "tool call · "),
      el("span", { class: "tool-name", "data-field": "tool" }, s.tool ?? "?"),
      el("span", { class: "fact call-id", "data-field": "call-id" }, s.call_id ?? ""),
    ),
    clipped(`${s.seq}:arguments`, "arguments", pretty(s.data.arguments), opened),
  ];
}

function toolResult(s: TranscriptStep, opened: Set<string>): HTMLElement[] {
  const ok = s.data.ok === true;
  const content = str(s.data.content);
  const chars = num(s.data.chars) ?? content.length;
  const latency = num(s.data.latency_ms);
  const facts = [
    el("span", { class: `badge ${ok ? "st-completed" : "st-failed"}`, "data-field": "outcome" }, ok ? "ok" : "error"),
    fact("chars", `${fmtInt(chars)} chars`),
  ];
  if (latency !== null) facts.push(fact("latency", `${Math.round(latency)} ms`));
  return [
    el(
      "div",
      { class: "step-head" },
      el("span", { class: "step-title" }, "tool result · "),
      el("span", { class: "tool-name", "data-field": "tool" }, s.tool ?? "?"),
      ...facts,
      el("span", { class: "fact call-id", "data-field": "call-id" }, s.call_id ?? ""),
    ),
    clipped(`${s.seq}:content`, "content", content, opened),
  ];
}

/** The panel's transcript block; `opened` remembers which long texts are shown whole. */
export function renderTranscript(steps: TranscriptStep[], opened: Set<string>): HTMLElement {
  const list = el("ol", { class: "transcript" });
  for (const s of steps) {
    const attrs: Record<string, string> = { class: `step step-${s.kind}`, "data-step-kind": s.kind, "data-seq": String(s.seq), "data-step": String(s.step) };
    if (s.call_id) attrs["data-call-id"] = s.call_id;
    if (s.tool) attrs["data-tool"] = s.tool;
    if (s.kind === "tool_result") attrs["data-ok"] = s.data.ok === true ? "true" : "false";
    const body = s.kind === "model" ? modelStep(s, opened) : s.kind === "tool_call" ? toolCall(s, opened) : s.kind === "tool_result" ? toolResult(s, opened) : [el("pre", { class: "text" }, JSON.stringify(s.data, null, 2))];
    list.append(el("li", attrs, ...body));
  }
  const calls = steps.filter((s) => s.kind === "tool_result").length;
  const models = steps.filter((s) => s.kind === "model").length;
  return el(
    "section",
    { class: "block", "data-block": "transcript" },
    el("h3", {}, `transcript (${models} model call${models === 1 ? "" : "s"}, ${calls} tool result${calls === 1 ? "" : "s"})`),
    list,
  );
}
