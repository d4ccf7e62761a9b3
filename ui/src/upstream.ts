// /ui/upstream: the upstream check (GET /upstream) with its advice.
import { api, el } from "./api";

interface UpstreamStatus {
  name: string;
  base_url: string;
  simulator: boolean;
  status: string;
  latency_ms: number | null;
  models: { model: string; offered: boolean | null; default: boolean }[];
  advice: string[];
}

export function showUpstream(app: HTMLElement): () => void {
  const out = el("div", { id: "upstream" }, el("p", { class: "muted" }, "Checking the upstreams…"));
  app.append(el("h1", {}, "Upstream"), out);
  let stopped = false;
  void (async () => {
    try {
      const report = await api<{ status: string; upstreams: UpstreamStatus[]; advice: string[] }>("/upstream");
      if (stopped) return;
      const parts: HTMLElement[] = [
        el("p", {}, "Overall: ", el("span", { id: "upstream-status", class: `badge up-${report.status}` }, report.status)),
      ];
      for (const a of report.advice) parts.push(el("p", { class: "advice" }, a));
      for (const u of report.upstreams) {
        const models = el("ul", { class: "models" });
        for (const m of u.models) {
          const state = m.offered === null ? "unknown" : m.offered ? "offered" : "not offered";
          models.append(el("li", {}, `${m.model}${m.default ? " (default)" : ""}: ${state}`));
        }
        parts.push(
          el(
            "section",
            { class: "upstream", "data-upstream": u.name, "data-status": u.status },
            el("h2", {}, `${u.name} `, el("span", { class: `badge up-${u.status}` }, u.status)),
            el("p", { class: "muted" }, `${u.base_url}${u.simulator ? " — the built-in simulator" : ""}`,
              u.latency_ms === null ? "" : `, ${Math.round(u.latency_ms)} ms`),
            ...u.advice.map((a) => el("p", { class: "advice" }, a)),
            models,
          ),
        );
      }
      out.replaceChildren(...parts);
      document.body.dataset.ready = "1";
    } catch (e) {
      out.replaceChildren(el("p", { class: "error" }, `The check failed: ${e instanceof Error ? e.message : String(e)}`));
    }
  })();
  return () => {
    stopped = true;
  };
}
