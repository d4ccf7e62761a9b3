// /ui/jobs/{id}: the job's DAG laid out by dagre, updated live from its event stream; a side
// panel for the selected agent; totals, a tokens and cost chart and cancel in the header.
//
// Large jobs stay usable by aggregation: a map node (and an agent's merge steps) is one node
// with a count and a mini bar of its items, expandable; in a job of more than GROUP_ABOVE
// top-level agents, agents with the same dependencies and dependents (5,000 documents feeding
// 50 sections) are one node per such set too. Every agent also has a row in the agent index
// below the graph, which carries data-agent-id and data-status whatever is drawn.
import dagre from "@dagrejs/dagre";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import {
  ApiError,
  RETRYABLE_JOB,
  TERMINAL_JOB,
  api,
  el,
  fmtCost,
  fmtInt,
  followEvents,
} from "./api";
import type { AgentDetail, AgentStatus, AgentSummary, Job, StreamEvent } from "./api";
import { renderTranscript } from "./transcript";

const GROUP_ABOVE = 120; // top-level agents beyond which like agents are drawn as one node
const GROUP_MIN = 10; // the smallest set drawn as one node
const NODE_W = 176;
const NODE_H = 46;
const AGG_H = 70;
const CELL = 16;
const HEADER_REFRESH_MS = 1000;
const RANK: Record<AgentStatus, number> = { pending: 0, running: 1, completed: 2, failed: 2, skipped: 2, cancelled: 2 };

interface Agent extends AgentSummary {
  row?: HTMLElement;
  drawn?: HTMLElement; // its node, or its cell in an expanded node
  unit?: string; // the unit it is drawn in
}

interface Unit {
  id: string;
  kind: "agent" | "aggregate";
  agent?: string; // a single agent, or the map node / reducer whose children it holds
  members: string[]; // an aggregate's agents (children, or a group of like agents)
  label: string;
  el?: HTMLElement;
  bar?: HTMLElement;
  countEl?: HTMLElement;
}

const EVENT_STATUS: Record<string, AgentStatus> = {
  "agent.started": "running",
  "agent.retrying": "running",
  "agent.expanded": "running",
  "agent.completed": "completed",
  "agent.failed": "failed",
  "agent.skipped": "skipped",
  "agent.cancelled": "cancelled",
};

export function showJob(app: HTMLElement, jobId: string): () => void {
  const enc = encodeURIComponent(jobId);
  const agents = new Map<string, Agent>();
  const children = new Map<string, string[]>();
  const units = new Map<string, Unit>();
  const expanded = new Set<string>();
  const dirtyAgents = new Set<string>();
  const dirtyUnits = new Set<string>();
  let job: Job | null = null;
  let selected: string | null = null;
  let stopStream: (() => void) | null = null;
  let stopped = false;
  let frame = 0;
  let headerTimer = 0;
  let lastHeader = 0;
  let relayoutNeeded = false;
  let chart: uPlot | null = null;
  const chartData: [number[], number[], number[]] = [[], [], []];
  let tokensSoFar = 0;
  let costSoFar = 0;
  let chartDirty = false;

  // --- the page's skeleton
  const title = el("h1", { id: "job-name" }, "…");
  const statusBadge = el("span", { id: "job-status", class: "badge" }, "");
  const totals = el("div", { id: "totals", class: "totals" });
  const streamState = el("span", { id: "stream-state", class: "muted" }, "");
  const cancel = el("button", { id: "cancel", class: "danger", disabled: "" }, "Cancel job");
  const retry = el("button", { id: "retry", disabled: "" }, "Retry failed");
  const chartBox = el("div", { id: "chart", class: "chart" });
  const dag = el("div", { id: "dag", class: "dag" });
  const canvas = el("div", { id: "dag-canvas", class: "dag-canvas" });
  dag.append(canvas);
  const panel = el("aside", { id: "panel", class: "panel" }, el("p", { class: "muted" }, "Select an agent to see its prompt, output, usage and retries."));
  const indexSummary = el("summary", {}, "All agents");
  const indexList = el("ol", { id: "agent-index-list", class: "agent-index" });
  const index = el("details", { id: "agent-index" }, indexSummary, indexList);
  const header = el(
    "section",
    { class: "job-header" },
    el("div", { class: "job-title" }, title, statusBadge, streamState, el("span", { class: "spacer" }), retry, cancel),
    el("div", { class: "job-stats" }, totals, chartBox),
  );
  const body = el("div", { class: "job-body" }, el("div", { class: "job-main" }, dag, index), panel);
  app.append(header, body);

  cancel.addEventListener("click", async () => {
    cancel.setAttribute("disabled", "");
    try {
      await api(`/jobs/${enc}/cancel`, { method: "POST" });
      streamState.textContent = "cancelling…";
    } catch (e) {
      streamState.textContent = `cancel failed: ${e instanceof Error ? e.message : String(e)}`;
      if (job && !TERMINAL_JOB.has(job.status)) cancel.removeAttribute("disabled");
    }
  });

  // --- header
  const renderHeader = () => {
    if (!job) return;
    title.textContent = job.name;
    statusBadge.textContent = job.status;
    statusBadge.className = `badge st-${job.status}`;
    statusBadge.dataset.status = job.status;
    if (TERMINAL_JOB.has(job.status)) cancel.setAttribute("disabled", "");
    else cancel.removeAttribute("disabled");
    // A failed or cancelled job can run its failed, skipped and cancelled agents again.
    if (RETRYABLE_JOB.has(job.status)) retry.removeAttribute("disabled");
    else retry.setAttribute("disabled", "");
    const c = job.counts;
    const done = c.total - c.pending - c.running;
    const started = job.started_at ? Date.parse(job.started_at) : null;
    const end = job.finished_at ? Date.parse(job.finished_at) : Date.now();
    const parts: [string, string][] = [
      ["done", `${fmtInt(done)} / ${fmtInt(c.total)}`],
      ["running", fmtInt(c.running)],
      ["completed", fmtInt(c.completed)],
      ["failed", fmtInt(c.failed)],
      ["skipped", fmtInt(c.skipped)],
      ["cancelled", fmtInt(c.cancelled)],
      ["tokens", fmtInt(job.usage.total_tokens)],
      ["cost", fmtCost(job.cost_usd)],
      ["elapsed", started === null ? "—" : `${((end - started) / 1000).toFixed(1)} s`],
    ];
    totals.replaceChildren(
      ...parts.map(([k, v]) => el("div", { class: "stat", "data-stat": k }, el("span", { class: "k" }, k), el("span", { class: "v" }, v))),
    );
    if (job.error) totals.append(el("div", { class: "job-error" }, job.error));
  };

  const refreshHeader = async () => {
    headerTimer = 0;
    lastHeader = Date.now();
    try {
      const fresh = await api<Job>(`/jobs/${enc}?agents=false`);
      if (stopped) return;
      // A terminal status seen in the stream stays, even if this read started before it.
      if (job && TERMINAL_JOB.has(job.status) && !TERMINAL_JOB.has(fresh.status)) fresh.status = job.status;
      job = fresh;
      renderHeader();
    } catch {
      /* the next event tries again */
    }
  };
  const scheduleHeader = () => {
    if (headerTimer) return;
    headerTimer = window.setTimeout(refreshHeader, Math.max(0, HEADER_REFRESH_MS - (Date.now() - lastHeader)));
  };

  // --- chart
  const initChart = () => {
    chart = new uPlot(
      {
        width: 420,
        height: 150,
        legend: { show: false },
        title: "tokens (blue, left) and cost (orange, right) so far",
        cursor: { show: false },
        scales: { x: { time: false }, tokens: { auto: true }, cost: { auto: true } },
        axes: [
          { label: "s", size: 30 },
          { scale: "tokens", size: 56 },
          { scale: "cost", side: 1, size: 56, values: (_u, ticks) => ticks.map((t) => `$${t.toPrecision(2)}`) },
        ],
        series: [
          { label: "s" },
          { label: "tokens", scale: "tokens", stroke: "#3b82f6", width: 2 },
          { label: "cost $", scale: "cost", stroke: "#f59e0b", width: 2, dash: [6, 4] },
        ],
      },
      chartData,
      chartBox,
    );
  };
  const chartPoint = (event: StreamEvent) => {
    const usage = event.usage as { total_tokens?: number | null } | undefined;
    tokensSoFar += usage?.total_tokens ?? 0;
    costSoFar += typeof event.cost_usd === "number" ? event.cost_usd : 0;
    const start = job?.started_at ? Date.parse(job.started_at) : job ? Date.parse(job.created_at) : Date.parse(event.ts);
    const x = Math.max(0, (Date.parse(event.ts) - start) / 1000);
    chartData[0].push(x);
    chartData[1].push(tokensSoFar);
    chartData[2].push(costSoFar);
    chartDirty = true;
  };

  // --- units and layout
  const buildUnits = () => {
    units.clear();
    const top = [...agents.values()].filter((a) => a.kind === "agent" || a.kind === "map");
    const dependents = new Map<string, string[]>();
    for (const a of top) for (const d of a.depends_on) (dependents.get(d) ?? dependents.set(d, []).get(d)!).push(a.id);
    const grouped = new Map<string, string[]>();
    if (top.length > GROUP_ABOVE) {
      for (const a of top) {
        if (children.get(a.id)?.length || a.kind === "map") continue; // drawn on their own
        const key = `${[...a.depends_on].sort().join(",")}>${(dependents.get(a.id) ?? []).sort().join(",")}`;
        (grouped.get(key) ?? grouped.set(key, []).get(key)!).push(a.id);
      }
    }
    const inGroup = new Map<string, string>();
    let n = 0;
    for (const members of grouped.values()) {
      if (members.length < GROUP_MIN) continue;
      const id = `group:${n++}`;
      units.set(id, { id, kind: "aggregate", members, label: `${members[0]} … ${members[members.length - 1]}` });
      for (const m of members) inGroup.set(m, id);
    }
    for (const a of top) {
      if (inGroup.has(a.id)) continue;
      const kids = children.get(a.id);
      if (a.kind === "map" || kids?.length) {
        units.set(a.id, { id: a.id, kind: "aggregate", agent: a.id, members: kids ?? [], label: a.id });
      } else {
        units.set(a.id, { id: a.id, kind: "agent", agent: a.id, members: [], label: a.id });
      }
    }
    for (const a of agents.values()) a.unit = undefined;
    for (const u of units.values()) {
      if (u.agent) agents.get(u.agent)!.unit = u.id;
      for (const m of u.members) {
        const a = agents.get(m);
        if (a) a.unit = u.id;
      }
    }
  };

  const unitOf = (agentId: string): string | undefined => {
    let a = agents.get(agentId);
    while (a && !a.unit && a.parent) a = agents.get(a.parent);
    return a?.unit;
  };

  const gridOf = (n: number) => {
    const cols = Math.max(1, Math.min(24, Math.ceil(Math.sqrt(n * 2))));
    return { cols, rows: Math.ceil(n / cols) };
  };

  const layout = () => {
    relayoutNeeded = false;
    const g = new dagre.graphlib.Graph();
    g.setGraph({ rankdir: "LR", nodesep: 14, ranksep: 60, marginx: 16, marginy: 16 });
    g.setDefaultEdgeLabel(() => ({}));
    for (const u of units.values()) {
      let w = NODE_W;
      let h = u.kind === "agent" ? NODE_H : AGG_H;
      if (u.kind === "aggregate" && expanded.has(u.id) && u.members.length) {
        const { cols, rows } = gridOf(u.members.length);
        w = Math.max(NODE_W, cols * CELL + 16);
        h = AGG_H + rows * CELL + 8;
      }
      g.setNode(u.id, { width: w, height: h });
    }
    const seen = new Set<string>();
    for (const u of units.values()) {
      const targets = u.agent ? [u.agent] : u.members;
      for (const t of targets) {
        for (const d of agents.get(t)?.depends_on ?? []) {
          const from = unitOf(d);
          if (!from || from === u.id) continue;
          const key = `${from}\u0000${u.id}`;
          if (seen.has(key)) continue;
          seen.add(key);
          g.setEdge(from, u.id);
        }
      }
    }
    dagre.layout(g);
    const graph = g.graph();
    canvas.replaceChildren();
    canvas.style.width = `${(graph.width ?? 0) + 32}px`;
    canvas.style.height = `${(graph.height ?? 0) + 32}px`;
    const svgNs = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(svgNs, "svg");
    svg.setAttribute("class", "edges");
    svg.setAttribute("width", String((graph.width ?? 0) + 32));
    svg.setAttribute("height", String((graph.height ?? 0) + 32));
    for (const e of g.edges()) {
      const points: { x: number; y: number }[] = g.edge(e).points ?? [];
      if (!points.length) continue;
      const path = document.createElementNS(svgNs, "path");
      path.setAttribute("d", points.map((p, i) => `${i ? "L" : "M"}${p.x.toFixed(1)},${p.y.toFixed(1)}`).join(" "));
      svg.append(path);
    }
    const nodes = document.createDocumentFragment();
    for (const u of units.values()) {
      const box = g.node(u.id);
      const node = drawUnit(u);
      node.style.left = `${box.x - box.width / 2}px`;
      node.style.top = `${box.y - box.height / 2}px`;
      node.style.width = `${box.width}px`;
      node.style.height = `${box.height}px`;
      nodes.append(node);
    }
    canvas.append(svg, nodes);
    markSelected();
  };

  const drawUnit = (u: Unit): HTMLElement => {
    if (u.kind === "agent") {
      const a = agents.get(u.agent!)!;
      const node = el(
        "div",
        { class: `node dag-node st-${a.status}`, "data-agent-id": a.id, "data-status": a.status, "data-kind": a.kind, tabindex: "0", title: a.id },
        el("div", { class: "name" }, a.id),
        el("div", { class: "meta" }),
      );
      a.drawn = node;
      renderMeta(a);
      u.el = node;
      return node;
    }
    const agent = u.agent ? agents.get(u.agent) : undefined;
    const attrs: Record<string, string> = { class: "node dag-node aggregate", "data-unit": u.id, "data-count": String(u.members.length) };
    if (agent) {
      attrs["data-agent-id"] = agent.id;
      attrs["data-status"] = agent.status;
      attrs["data-kind"] = agent.kind;
      attrs.class += ` st-${agent.status}`;
      attrs.tabindex = "0";
    } else {
      attrs["data-group"] = u.id;
    }
    const countEl = el("span", { class: "count" });
    const bar = el("div", { class: "bar mini" });
    const toggle = el("button", { class: "expand", "data-unit": u.id }, expanded.has(u.id) ? "collapse" : "expand");
    const node = el("div", attrs, el("div", { class: "name" }, u.label), el("div", { class: "meta" }, countEl, toggle), bar);
    u.el = node;
    u.bar = bar;
    u.countEl = countEl;
    if (agent) agent.drawn = node;
    if (expanded.has(u.id)) {
      const grid = el("div", { class: "cells" });
      grid.style.gridTemplateColumns = `repeat(${gridOf(u.members.length).cols}, ${CELL - 2}px)`;
      for (const m of u.members) {
        const a = agents.get(m);
        if (!a) continue;
        const cell = el("div", { class: `cell dag-node st-${a.status}`, "data-agent-id": a.id, "data-status": a.status, "data-kind": a.kind, title: `${a.id}: ${a.status}` });
        a.drawn = cell;
        grid.append(cell);
      }
      node.append(grid);
    } else {
      for (const m of u.members) {
        const a = agents.get(m);
        if (a) a.drawn = undefined;
      }
    }
    renderBar(u);
    return node;
  };

  const renderMeta = (a: Agent) => {
    const meta = a.drawn?.querySelector(".meta");
    if (!meta || a.drawn?.classList.contains("aggregate")) return;
    const bits: string[] = [a.status];
    if (a.total_tokens) bits.push(`${fmtInt(a.total_tokens)} tok`);
    if (a.cost_usd !== null && a.cost_usd !== undefined) bits.push(fmtCost(a.cost_usd));
    if (a.attempts > 1) bits.push(`${a.attempts} attempts`);
    meta.textContent = bits.join(" · ");
  };

  // What an agent's children are: a map node's items, a reducer's merge steps, or the
  // sub-agents a tool-using agent spawned.
  const nounOf = (u: Unit): string => {
    if (agents.get(u.agent!)?.kind === "map") return "items";
    const kids = u.members.map((m) => agents.get(m)?.kind);
    if (kids.length && kids.every((k) => k === "spawned")) return "spawned";
    if (kids.includes("spawned")) return "sub-agents";
    return "steps";
  };

  const renderBar = (u: Unit) => {
    if (!u.bar || !u.countEl) return;
    const counts: Record<string, number> = {};
    for (const m of u.members) {
      const s = agents.get(m)?.status ?? "pending";
      counts[s] = (counts[s] ?? 0) + 1;
    }
    const total = u.members.length;
    const done = total - (counts.pending ?? 0) - (counts.running ?? 0);
    const noun = u.agent ? nounOf(u) : "agents";
    u.countEl.textContent = total ? `${done}/${total} ${noun}` : u.agent ? "not fanned out yet" : "";
    u.el?.setAttribute("data-count", String(total));
    const segs: HTMLElement[] = [];
    for (const s of ["completed", "failed", "skipped", "cancelled", "running"]) {
      if (counts[s]) segs.push(el("span", { class: `seg st-${s}`, style: `width:${(100 * counts[s]) / Math.max(total, 1)}%` }));
    }
    u.bar.replaceChildren(...segs);
  };

  // --- the agent index: one row per agent, whatever is drawn
  const renderIndex = () => {
    const rows = document.createDocumentFragment();
    for (const a of agents.values()) {
      const row = el("li", { class: `agent-row st-${a.status}`, "data-agent-id": a.id, "data-status": a.status, "data-kind": a.kind }, a.id);
      a.row = row;
      rows.append(row);
    }
    indexList.replaceChildren(rows);
    indexSummary.textContent = `All agents (${fmtInt(agents.size)})`;
  };

  const addAgent = (a: AgentSummary) => {
    const known = agents.get(a.id);
    if (known) {
      Object.assign(known, a, { row: known.row, drawn: known.drawn, unit: known.unit });
      return known;
    }
    const agent: Agent = { ...a };
    agents.set(a.id, agent);
    if (a.parent) {
      const kids = children.get(a.parent) ?? children.set(a.parent, []).get(a.parent)!;
      if (!kids.includes(a.id)) kids.push(a.id);
    }
    return agent;
  };

  // --- live updates, applied once per animation frame
  const setStatus = (a: Agent, status: AgentStatus, authoritative = false) => {
    // A replayed event older than the snapshot never moves an agent back (retries go back
    // through running, never out of a final state).
    if (!authoritative && RANK[status] < RANK[a.status]) return;
    if (a.status === status) return;
    a.status = status;
    dirtyAgents.add(a.id);
  };

  const schedule = () => {
    if (!frame && !stopped) frame = requestAnimationFrame(flush);
  };

  const flush = () => {
    frame = 0;
    if (relayoutNeeded) {
      buildUnits();
      layout();
    }
    for (const id of dirtyAgents) {
      const a = agents.get(id);
      if (!a) continue;
      for (const node of [a.row, a.drawn]) {
        if (!node) continue;
        node.dataset.status = a.status;
        node.className = node.className.replace(/\bst-\w+/, `st-${a.status}`);
      }
      renderMeta(a);
      const u = unitOf(id);
      if (u) dirtyUnits.add(u);
    }
    for (const id of dirtyUnits) {
      const u = units.get(id);
      if (u) renderBar(u);
    }
    if (selected && dirtyAgents.has(selected)) void showAgent(selected);
    dirtyAgents.clear();
    dirtyUnits.clear();
    if (chartDirty && chart) {
      chart.setData(chartData);
      chartDirty = false;
    }
  };

  const onEvents = (events: StreamEvent[]) => {
    for (const e of events) {
      if (e.type.startsWith("job.")) {
        if (job && e.type !== "job.queued") {
          job.status = e.type === "job.started" ? "running" : e.type.slice(4);
          renderHeader();
        }
        continue;
      }
      const id = e.agent_id;
      if (!id) continue;
      let a = agents.get(id);
      if (e.type === "agent.expanded" && Array.isArray(e.agents)) {
        for (const sub of e.agents as string[]) {
          if (agents.has(sub)) continue;
          const parent = agents.get(id);
          const b = addAgent({
            id: sub,
            kind: sub.startsWith(`${id}~`) ? "spawned" : /\[\d+\]$/.test(sub) ? "item" : "merge",
            parent: id,
            status: "pending",
            model: parent?.model ?? "",
            depends_on: [],
            attempts: 0,
            total_tokens: null,
            cost_usd: null,
            latency_ms: null,
            error: null,
          });
          const row = el("li", { class: "agent-row st-pending", "data-agent-id": b.id, "data-status": "pending", "data-kind": b.kind }, b.id);
          b.row = row;
          indexList.append(row);
        }
        indexSummary.textContent = `All agents (${fmtInt(agents.size)})`;
        relayoutNeeded = true;
      }
      if (!a) a = agents.get(id);
      if (!a) continue;
      const status = EVENT_STATUS[e.type];
      if (status) setStatus(a, status);
      if (e.type === "agent.started" && typeof e.attempt === "number") a.attempts = Math.max(a.attempts, e.attempt);
      if (e.type === "agent.completed") {
        const usage = e.usage as { total_tokens?: number | null } | undefined;
        if (usage?.total_tokens != null) a.total_tokens = usage.total_tokens;
        if (typeof e.cost_usd === "number") a.cost_usd = e.cost_usd;
        chartPoint(e);
      }
      if (e.type === "agent.failed" && typeof e.error === "string") a.error = e.error;
      dirtyAgents.add(a.id);
    }
    scheduleHeader();
    schedule();
  };

  // --- the side panel
  let panelFor: string | null = null;
  const openedTexts = new Set<string>(); // the transcript's long texts shown whole, by step
  let panelRead = 0; // the panel shows only the latest read (reads overlap as events arrive)
  const markSelected = () => {
    for (const n of canvas.querySelectorAll(".selected")) n.classList.remove("selected");
    if (selected) agents.get(selected)?.drawn?.classList.add("selected");
  };
  const showAgent = async (id: string) => {
    selected = id;
    markSelected();
    if (panelFor !== id) {
      panel.replaceChildren(el("p", { class: "muted" }, `Loading ${id}…`));
      openedTexts.clear();
    }
    panelFor = id;
    const read = ++panelRead;
    let d: AgentDetail;
    try {
      d = await api<AgentDetail>(`/jobs/${enc}/agents/${encodeURIComponent(id)}`);
    } catch (e) {
      if (read !== panelRead) return;
      if (selected === id) panel.replaceChildren(el("p", { class: "error" }, `Could not load ${id}: ${e instanceof Error ? e.message : String(e)}`));
      return;
    }
    if (read !== panelRead || selected !== id || stopped) return;
    const kv = (k: string, v: string) => el("div", { class: "kv", "data-field": k }, el("span", { class: "k" }, k), el("span", { class: "v" }, v));
    const block = (name: string, text: string | null) =>
      el("section", { class: "block", "data-block": name }, el("h3", {}, name), el("pre", { class: `text ${name}` }, text ?? "—"));
    const parts: HTMLElement[] = [
      el("h2", { id: "panel-agent", "data-agent-id": d.id, "data-status": d.status }, d.id, " ", el("span", { class: `badge st-${d.status}` }, d.status)),
      kv("kind", d.parent ? `${d.kind} ${d.kind === "spawned" ? "by" : "of"} ${d.parent}` : d.kind),
      kv("model", d.model),
      kv("attempts", `${d.attempts}${d.rate_limited ? ` (${d.rate_limited} rate-limited)` : ""}`),
      kv("tokens", d.usage ? `${fmtInt(d.usage.total_tokens)} (prompt ${fmtInt(d.usage.prompt_tokens)}, completion ${fmtInt(d.usage.completion_tokens)})` : "—"),
      kv("cost", fmtCost(d.cost_usd)),
      kv("latency", d.latency_ms === null ? "—" : `${Math.round(d.latency_ms)} ms`),
    ];
    if (d.depends_on.length) parts.push(kv("depends on", d.depends_on.join(", ")));
    if (d.last_error) parts.push(el("section", { class: "block", "data-block": "error" }, el("h3", {}, "last error"), el("pre", { id: "agent-error", class: "text error" }, d.last_error)));
    if (d.retries.length) {
      const table = el("table", { class: "retries" }, el("tr", {}, el("th", {}, "attempt"), el("th", {}, "reason"), el("th", {}, "error"), el("th", {}, "delay")));
      for (const r of d.retries) {
        table.append(el("tr", { class: "retry" }, el("td", {}, String(r.attempt)), el("td", {}, r.reason), el("td", {}, r.error), el("td", {}, `${r.delay_s.toFixed(2)} s`)));
      }
      parts.push(el("section", { class: "block", "data-block": "retries" }, el("h3", {}, `retries (${d.retries.length})`), table));
    }
    if (d.system_prompt) parts.push(block("system prompt", d.system_prompt));
    parts.push(block("prompt", d.prompt));
    if (d.transcript?.length) parts.push(renderTranscript(d.transcript, openedTexts));
    const output = block("output", d.output);
    output.querySelector("pre")?.setAttribute("id", "agent-output");
    parts.push(output);
    panel.replaceChildren(...parts);
  };

  const onClick = (e: Event) => {
    const target = e.target as HTMLElement;
    const toggle = target.closest<HTMLElement>("button.expand");
    if (toggle) {
      const id = toggle.dataset.unit!;
      if (expanded.has(id)) expanded.delete(id);
      else expanded.add(id);
      layout();
      return;
    }
    const node = target.closest<HTMLElement>("[data-agent-id]");
    if (node?.dataset.agentId) void showAgent(node.dataset.agentId);
  };
  canvas.addEventListener("click", onClick);
  indexList.addEventListener("click", onClick);

  // --- loading
  const loadAgents = async (): Promise<AgentSummary[]> => {
    const all: AgentSummary[] = [];
    let cursor: string | null = null;
    do {
      const q: string = cursor ? `&cursor=${encodeURIComponent(cursor)}` : "";
      const page: { data: AgentSummary[]; next_cursor: string | null } = await api(`/jobs/${enc}/agents?limit=1000${q}`);
      all.push(...page.data);
      cursor = page.next_cursor;
    } while (cursor && !stopped);
    return all;
  };

  const follow = (after: number) => {
    stopStream?.();
    stopStream = followEvents(jobId, after, {
      onEvents,
      onState: (state, detail) => {
        streamState.dataset.state = state;
        streamState.textContent = state === "live" ? "live" : state === "reconnecting" ? `reconnecting (${detail})` : detail ?? "stream ended";
        if (state === "ended" && detail !== "not found") void reconcile();
      },
    });
  };

  retry.addEventListener("click", async () => {
    retry.setAttribute("disabled", "");
    try {
      const accepted = await api<{ retried_seq: number }>(`/jobs/${enc}/retry`, { method: "POST" });
      streamState.textContent = "retrying…";
      // The agents going back to pending are read whole; the stream then follows the new run.
      await reconcile();
      follow(accepted.retried_seq - 1);
    } catch (e) {
      streamState.textContent = `retry failed: ${e instanceof Error ? e.message : String(e)}`;
      if (job && RETRYABLE_JOB.has(job.status)) retry.removeAttribute("disabled");
    }
  });

  const reconcile = async (): Promise<void> => {
    // The job ended: one last read makes the page the database's final state, whatever the
    // stream delivered. The service may be gone for a moment (a restart): try again.
    let fresh: AgentSummary[];
    try {
      fresh = await loadAgents();
    } catch {
      if (!stopped) window.setTimeout(() => void reconcile(), 2000);
      return;
    }
    if (stopped) return;
    let added = false;
    for (const s of fresh) {
      const a = agents.get(s.id);
      if (!a) {
        addAgent(s);
        added = true;
        continue;
      }
      Object.assign(a, { attempts: s.attempts, total_tokens: s.total_tokens, cost_usd: s.cost_usd, error: s.error });
      setStatus(a, s.status, true);
      dirtyAgents.add(a.id);
    }
    if (added) {
      renderIndex();
      relayoutNeeded = true;
    }
    await refreshHeader();
    schedule();
  };

  void (async () => {
    try {
      job = await api<Job>(`/jobs/${enc}?agents=false`);
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) {
        app.replaceChildren(el("div", { id: "not-found", class: "not-found" }, el("h1", {}, "Job not found"), el("p", {}, `No job ${jobId} here. `, el("a", { href: "/ui/" }, "All jobs"))));
        document.body.dataset.ready = "1";
        return;
      }
      app.replaceChildren(el("p", { class: "error" }, `Could not load the job: ${e instanceof Error ? e.message : String(e)}`));
      return;
    }
    renderHeader();
    let list: AgentSummary[];
    try {
      list = await loadAgents();
    } catch (e) {
      app.replaceChildren(el("p", { class: "error" }, `Could not load the agents: ${e instanceof Error ? e.message : String(e)}`));
      return;
    }
    if (stopped) return;
    for (const a of list) addAgent(a);
    renderIndex();
    buildUnits();
    layout();
    initChart();
    document.body.dataset.ready = "1";
    performance.mark("swarm-interactive");
    follow(0);
  })();

  return () => {
    stopped = true;
    stopStream?.();
    if (frame) cancelAnimationFrame(frame);
    clearTimeout(headerTimer);
    chart?.destroy();
  };
}
