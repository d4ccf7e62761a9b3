"""Command line entry point (``python -m app.simulator`` / ``swarm-simulator``).

Flags are generated from ``SimulatorConfig`` fields; serves until SIGINT/SIGTERM (or parent exit).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

from app.simulator.config import SimulatorConfig
from app.simulator.server import start_server

API_KEY_ENV = "SIMULATOR_API_KEY"  # lets callers keep the key out of the process list
MODELS_FILE_ENV = "SWARM_MODELS_FILE"
PARENT_POLL_S = 1.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swarm-simulator", description="OpenAI-compatible upstream simulator."
    )
    for name, field in SimulatorConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = f"{field.description} [default: {field.default}]"
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action="store_true", help=help_text)
        else:
            # Values stay strings here; pydantic does the parsing and range checks.
            parser.add_argument(flag, dest=name, metavar="VALUE", help=help_text)
    return parser


def parse_config(argv: Sequence[str] | None = None) -> SimulatorConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    values: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}
    if not values.get("exit_with_parent"):
        values.pop("exit_with_parent", None)
    if "api_key" not in values and os.environ.get(API_KEY_ENV):
        values["api_key"] = os.environ[API_KEY_ENV]
    if "models_file" not in values and os.environ.get(MODELS_FILE_ENV):
        # Started by the service (or beside it): the same registry, the same windows.
        values["models_file"] = os.environ[MODELS_FILE_ENV]
    try:
        return SimulatorConfig.model_validate(values)
    except ValidationError as exc:
        lines = [
            f"--{'.'.join(str(p) for p in err['loc']).replace('_', '-') or 'config'}: {err['msg']}"
            for err in exc.errors(include_url=False, include_input=False)
        ]
        parser.error("; ".join(lines))


async def _watch_parent(stop: Callable[[], None]) -> None:
    # An orphan is re-parented (to init or a subreaper), which changes getppid().
    parent = os.getppid()
    while True:
        await asyncio.sleep(PARENT_POLL_S)
        if os.getppid() != parent:
            stop()
            return


async def serve(config: SimulatorConfig) -> None:
    runner, port = await start_server(config)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopped.set)
    watcher = asyncio.create_task(_watch_parent(stopped.set)) if config.exit_with_parent else None
    host = f"[{config.host}]" if ":" in config.host else config.host
    print(f"simulator listening on http://{host}:{port}", flush=True)
    try:
        await stopped.wait()
    finally:
        if watcher is not None:
            watcher.cancel()
        await runner.cleanup()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # optional: measured ~5% less CPU per request than asyncio's loop
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_config(argv)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(config))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
