"""A caller-served tool for end-to-end tests, run as its own process:

    python -m tests.helpers.tool_server --port P --secret whsec_… --log calls.jsonl [--hang N]

Each POST is checked against its Standard Webhooks signature (401 if wrong) and logged on
arrival, one JSON line {n, call_id, arguments}; the answer is {"found": …}. With --hang N the
Nth request never gets an answer (a call in flight when the service is killed); the same
call_id arriving again is answered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

LISTENING = "tool server listening on"


def build(secret: str, log: Path, hang: int | None) -> web.Application:
    seen = {"n": 0}

    async def call(request: web.Request) -> web.Response:
        body = (await request.read()).decode()
        try:
            Webhook(secret).verify(body, dict(request.headers))
        except WebhookVerificationError:
            return web.json_response({"error": "bad signature"}, status=401)
        payload = json.loads(body)
        seen["n"] += 1
        n = seen["n"]
        with log.open("a") as f:
            f.write(json.dumps({"n": n, **payload}) + "\n")
        if n == hang:
            await asyncio.sleep(3600)
        return web.json_response({"found": f"fact about {payload['arguments']}"})

    app = web.Application()
    app.router.add_post("/lookup", call)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--hang", type=int, default=None)
    args = parser.parse_args()
    print(f"{LISTENING} 127.0.0.1:{args.port}", flush=True)
    web.run_app(
        build(args.secret, args.log, args.hang), host="127.0.0.1", port=args.port, print=None
    )


if __name__ == "__main__":
    main()
