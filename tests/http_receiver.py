"""A real HTTP server for the webhook and Splunk HEC tests, run as its own process:

    python tests/http_receiver.py PORT OUT.jsonl [--status CODE]

Each POST is appended to OUT.jsonl as {"path", "headers", "body"} and answered ``CODE``
(default 200) with a HEC-style ``{"text": "Success", "code": 0}``. Loopback only.
"""

from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("out")
    parser.add_argument("--status", type=int, default=200)
    args = parser.parse_args()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            record = {
                "path": self.path,
                "headers": dict(self.headers.items()),
                "body": json.loads(body or b"null"),
            }
            with open(args.out, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            answer = json.dumps(
                {"text": "Success", "code": 0} if args.status == 200 else {"code": 9}
            ).encode()
            self.send_response(args.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print("ready", flush=True)
    sys.stdout.close()
    server.serve_forever()


if __name__ == "__main__":
    main()
