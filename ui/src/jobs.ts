// /ui/: the tenant's jobs, newest first, refreshed every 2 s, filtered by status.
import { ApiError, TERMINAL_JOB, api, el, fmtAge, fmtCost, fmtInt } from "./api";
import type { Job, JobListItem } from "./api";

const STATUSES = ["", "queued", "running", "completed", "failed", "cancelled"];
const REFRESH_MS = 2000;
const PAGE = 50;

export function showJobs(app: HTMLElement): () => void {
  const params = new URLSearchParams(location.search);
  const status = params.get("status") ?? "";
  const filter = el("select", { id: "status-filter", "aria-label": "status" });
  for (const s of STATUSES) filter.append(el("option", { value: s }, s || "all statuses"));
  filter.value = status;
  filter.addEventListener("change", () => {
    const q = filter.value ? `?status=${filter.value}` : "";
    history.pushState(null, "", `/ui/${q}`);
    window.dispatchEvent(new PopStateEvent("popstate"));
  });
  const body = el("tbody");
  const message = el("p", { id: "jobs-message", class: "muted" });
  const table = el(
    "table",
    { id: "jobs", class: "jobs" },
    el(
      "thead",
      {},
      el("tr", {}, ...["job", "status", "progress", "agents", "tokens", "cost", "age"].map((h) => el("th", {}, h))),
    ),
    body,
  );
  app.append(el("div", { class: "toolbar" }, el("h1", {}, "Jobs"), filter), table, message);

  const details = new Map<string, Job>();
  let timer = 0;
  let stopped = false;

  const render = (items: JobListItem[]) => {
    const rows: HTMLElement[] = [];
    for (const item of items) {
      const job = details.get(item.id);
      const counts = job?.counts;
      const done = counts ? counts.total - counts.pending - counts.running : 0;
      const total = counts?.total ?? item.agents_total;
      const bar = el("div", { class: "bar" });
      if (counts && total > 0) {
        for (const s of ["completed", "failed", "skipped", "cancelled", "running"] as const) {
          if (counts[s]) bar.append(el("span", { class: `seg st-${s}`, style: `width:${(100 * counts[s]) / total}%` }));
        }
      }
      rows.push(
        el(
          "tr",
          { "data-job-id": item.id, "data-status": item.status },
          el("td", {}, el("a", { href: `/ui/jobs/${item.id}`, class: "job-link" }, item.name), el("div", { class: "id" }, item.id)),
          el("td", {}, el("span", { class: `badge st-${item.status}` }, item.status)),
          el("td", { class: "progress" }, bar),
          el("td", { class: "num done" }, `${fmtInt(done)} / ${fmtInt(total)}`),
          el("td", { class: "num" }, fmtInt(job?.usage.total_tokens)),
          el("td", { class: "num" }, fmtCost(job?.cost_usd)),
          el("td", { class: "num", title: item.created_at }, fmtAge(item.created_at)),
        ),
      );
    }
    body.replaceChildren(...rows);
    message.textContent = items.length ? "" : status ? `No ${status} jobs.` : "No jobs yet: submit one (swarmctl submit FILE).";
  };

  const refresh = async () => {
    try {
      const q = new URLSearchParams({ limit: String(PAGE) });
      if (status) q.set("status", status);
      const page = await api<{ data: JobListItem[] }>(`/jobs?${q}`);
      // Counts, tokens and cost come from each job (the list has none); finished ones once.
      await Promise.all(
        page.data
          .filter((j) => !TERMINAL_JOB.has(j.status) || details.get(j.id)?.status !== j.status)
          .map(async (j) => {
            try {
              details.set(j.id, await api<Job>(`/jobs/${j.id}?agents=false`));
            } catch (e) {
              if (!(e instanceof ApiError && e.status === 404)) throw e;
            }
          }),
      );
      if (stopped) return;
      render(page.data);
      document.body.dataset.ready = "1";
    } catch (e) {
      message.textContent = `Could not load the jobs: ${e instanceof Error ? e.message : String(e)}`;
    }
    if (!stopped) timer = window.setTimeout(refresh, REFRESH_MS);
  };
  void refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
