"""Summarise a py-spy profile in collapsed-stack form (``py-spy record --format raw``, as
``python -m bench.run --profile DIR`` writes them): where the service's CPU samples go.

    python -m bench.profile_summary DIR/overhead-aiohttp.txt [--top 25]

Samples are attributed to the first category (in the order below) whose marker appears in
the stack, so the categories add up to 100 %.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# (category, markers): a sample belongs to the first category with a marker in its stack.
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("submit (validate, insert)", ("submit_job (app/api/jobs.py",)),
    ("store writer thread (SQLite)", ("StoreWriter._write_batch", "StoreWriter._commit")),
    ("store reads (thread)", ("Store.read.<locals>",)),
    ("SSE streams", ("EventSourceResponse", "job_events (app/events/stream.py")),
    ("upstream call: openai SDK + HTTP transport", ("call_chat (app/upstream/client.py",)),
    ("other API requests", ("RequestResponseCycle.run_asgi", "FastAPI.__call__")),
    ("scheduler: job run, limits", ("app/scheduler/",)),
    ("store: queueing writes, publishing events", ("app/store/", "app/events/")),
    ("metrics, logging", ("prometheus_client", "logging/", "app/logging_setup")),
    ("event loop (selector, callbacks, other)", ("",)),
]


def load(path: Path) -> list[tuple[list[str], int]]:
    samples = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            samples.append((stack.split(";"), int(count)))
    return samples


def summarise(path: Path, top: int = 25) -> str:
    samples = load(path)
    total = sum(n for _, n in samples) or 1
    by_cat: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, n in samples:
        stack = ";".join(frames)
        for name, markers in CATEGORIES:
            if any(m in stack for m in markers):
                by_cat[name] += n
                break
        own[frames[-1]] += n
        for key in {re.sub(r":\d+\)$", ")", f) for f in frames}:
            inclusive[key] += n
    lines = [f"{path.name}: {total} samples"]
    lines.append("by category:")
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in by_cat.most_common()]
    lines.append(f"top {top} functions by own samples:")
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines.append(f"top {top} app/ functions by inclusive samples:")
    app = [(f, n) for f, n in inclusive.most_common() if "app/" in f]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in app[:top]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profiles", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    for path in args.profiles:
        print(summarise(path, args.top))
        print()


if __name__ == "__main__":
    main()
