"""A webhook receiver for end-to-end tests, run as its own process on loopback:

    python -m tests.helpers.webhook_receiver SECRET MODE_FILE LOG_FILE

It verifies each request with the Standard Webhooks reference library, answers with the
status named in MODE_FILE (read per request: "204", "503", "410", …), and appends one JSON
line per request to LOG_FILE: the webhook-id, whether the signature verified, the status
it answered, and the body.
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def main() -> None:
    secret, mode_file, log_file = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    verifier = Webhook(secret)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0"))).decode()
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                verifier.verify(body, headers)
                verified = True
            except WebhookVerificationError:
                verified = False
            status = int(mode_file.read_text().strip() or "204")
            record = {
                "id": headers.get("webhook-id"),
                "verified": verified,
                "status": status,
                "body": json.loads(body) if body else None,
            }
            with log_file.open("a") as out:
                out.write(json.dumps(record) + "\n")
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
