"""Browser fixtures: Debian's Chromium driven by Playwright (never a downloaded browser), the
service and the simulator as subprocesses on loopback, and a TCP proxy that can cut the
page's connections."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.helpers.processes import Proc, free_port, start_service, start_simulator

CHROMIUM = Path("/usr/bin/chromium")

# What the page records: every data-status each agent's index row has shown, in order.
RECORD_STATUSES = """
window.__seen = {};
const note = (el) => {
  if (!el.classList || !el.classList.contains('agent-row')) return;
  const list = (window.__seen[el.dataset.agentId] ||= []);
  if (list[list.length - 1] !== el.dataset.status) list.push(el.dataset.status);
};
new MutationObserver((records) => {
  for (const r of records) {
    if (r.type === 'attributes') note(r.target);
    else for (const n of r.addedNodes) if (n.nodeType === 1) {
      note(n);
      n.querySelectorAll && n.querySelectorAll('.agent-row').forEach(note);
    }
  }
}).observe(document, {subtree: true, childList: true, attributes: true,
                      attributeFilter: ['data-status']});
"""


# One browser per module: Playwright's sync API runs an event loop of its own, under which
# the async tests of other modules could not run theirs.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(
            "the dashboard's browser tests need Debian's Chromium at /usr/bin/chromium "
            "(apt-get install chromium; .ci/run installs it)"
        )
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.add_init_script(RECORD_STATUSES)
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert not errors, f"the page threw: {errors}"


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[Proc]:
    sim = start_simulator(tmp_path, "--latency-uniform-ms", "300,700", "--seed", "7")
    yield sim
    sim.stop()


@pytest.fixture
def service(tmp_path: Path, simulator: Proc) -> Iterator[Proc]:
    svc = start_service(tmp_path, {"SWARM_UPSTREAM_BASE_URL": simulator.url + "/v1"})
    yield svc
    svc.stop()


@pytest.fixture
def client(service: Proc) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=service.url, timeout=10) as c:
        yield c


class CuttingProxy:
    """A TCP proxy on loopback in front of the service; `cut()` drops every connection open
    through it at that moment (as a restarted proxy or a flaky network would)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                conn.close()
                continue
            with self._lock:
                self._open.update((conn, upstream))
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        with self._lock:
            self._open.difference_update((src, dst))

    def cut(self) -> None:
        with self._lock:
            sockets, self._open = self._open, set()
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self.cuts += 1

    def close(self) -> None:
        self._server.close()
        self.cut()


@pytest.fixture
def proxy(service: Proc) -> Iterator[CuttingProxy]:
    p = CuttingProxy(int(service.url.rsplit(":", 1)[1]))
    yield p
    p.close()
