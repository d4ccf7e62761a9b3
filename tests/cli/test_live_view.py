"""On a terminal, --follow draws the live view (rich Live) instead of plain lines."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time

import pytest

from tests.cli.conftest import EXAMPLES, ROOT, cli_env, swarmctl_command

pytestmark = pytest.mark.e2e

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_on_terminal(url: str, *args: str, timeout: float = 30) -> tuple[int, str]:
    """Run swarmctl with a pseudo-terminal as stdout and stderr; its exit code and screen
    output (escape codes included)."""
    leader, follower = pty.openpty()
    env = cli_env(url, TERM="xterm-256color", COLUMNS="100", LINES="30")
    proc = subprocess.Popen(
        [*swarmctl_command(), *args],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        env=env,
        cwd=ROOT,
    )
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.1)
            if ready:
                try:
                    data = os.read(leader, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, b"".join(chunks).decode(errors="replace")


def test_follow_on_a_terminal_draws_the_live_view_then_the_summary(url: str) -> None:
    code, screen = run_on_terminal(url, "submit", str(EXAMPLES / "doc_analysis.json"), "-f")
    assert code == 0, screen
    assert ANSI.search(screen), "a terminal gets a live view, with escape codes"
    text = ANSI.sub("", screen)
    # The panel: name and status in its title, the bar and the figures, agents by status.
    assert re.search(r"╭─ doc-analysis\s+\w{26}\s+completed", text), text
    assert "━" in text and "4/4  100%" in text
    assert re.search(r"running 0\s+retries 0\s+tokens [\d,]+\s+cost \$0\.\d{4}\s+elapsed", text)
    assert re.search(r"completed\s+4\s+summary ", text), text
    # No plain per-event lines on a terminal; the summary after the view.
    assert "] summary completed:" not in text
    assert re.search(r"job \w+ completed in [\d.]+ s: 4 of 4 agents completed", text), text


def test_plain_flag_keeps_lines_on_a_terminal(url: str) -> None:
    code, screen = run_on_terminal(
        url, "submit", str(EXAMPLES / "doc_analysis.json"), "-f", "--plain"
    )
    assert code == 0, screen
    text = ANSI.sub("", screen)
    assert "] summary completed:" in text
    assert "╭─" not in text
