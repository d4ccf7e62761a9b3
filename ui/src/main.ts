// The dashboard's entry: client-side routes /ui/, /ui/jobs/{id} and /ui/upstream.
import "./style.css";
import { forgetKey, updateKeyButton } from "./api";
import { showJobs } from "./jobs";
import { showJob } from "./job";
import { showUpstream } from "./upstream";

let leave: (() => void) | null = null;

function route(): void {
  leave?.();
  leave = null;
  const app = document.getElementById("app") as HTMLElement;
  app.replaceChildren();
  delete document.body.dataset.ready;
  const path = location.pathname.replace(/\/+$/, "");
  const job = /^\/ui\/jobs\/([^/]+)$/.exec(path);
  for (const a of document.querySelectorAll<HTMLAnchorElement>("[data-nav]")) {
    a.classList.toggle("active", (a.dataset.nav === "upstream") === path.endsWith("/upstream"));
  }
  if (job) leave = showJob(app, decodeURIComponent(job[1]));
  else if (path === "/ui/upstream") leave = showUpstream(app);
  else leave = showJobs(app);
}

// Same-origin links under /ui/ change the route without a page load.
document.addEventListener("click", (e) => {
  const a = (e.target as Element).closest("a");
  if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || !url.pathname.startsWith("/ui")) return;
  e.preventDefault();
  if (url.pathname + url.search !== location.pathname + location.search) {
    history.pushState(null, "", url.pathname + url.search);
  }
  route();
});
window.addEventListener("popstate", route);
document.getElementById("forget-key")?.addEventListener("click", () => {
  forgetKey();
  updateKeyButton();
  route();
});
updateKeyButton();
route();
