"""A real HTTP server for the webhook and Splunk HEC tests, run as its own process:

    python tests/http_receiver.py PORT OUT.jsonl [--status CODE] [--delay SECONDS]

Each POST is appended to OUT.jsonl as {"path", "headers", "body", "received_at",
"duplicate"} and answered ``CODE`` (default 200, after ``--delay``) with a HEC-style
``{"text": "Success", "code": 0}``. Like a receiver that honours idempotency keys, it marks
a request whose ``Idempotency-Key`` it has already accepted as a duplicate. Loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("out")
    parser.add_argument("--status", type=int, default=200)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    seen: set[str] = set()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            key = self.headers.get("Idempotency-Key") or self.headers.get("X-Idempotency-Key")
            with lock:
                record = {
                    "path": self.path,
                    "headers": dict(self.headers.items()),
                    "body": json.loads(body or b"null"),
                    "received_at": time.time(),
                    "duplicate": key in seen,
                }
                seen.add(key)
                with open(args.out, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
            time.sleep(args.delay)
            self.answer()

        def answer(self) -> None:
            answer = json.dumps(
                {"text": "Success", "code": 0} if args.status == 200 else {"code": 9}
            ).encode()
            self.send_response(args.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            # the sender may have died waiting (the kill -9 test): it will send again
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(answer)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print("ready", flush=True)
    sys.stdout.close()
    server.serve_forever()


if __name__ == "__main__":
    main()
