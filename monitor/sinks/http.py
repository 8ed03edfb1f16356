"""One HTTP POST of JSON, shared by the webhook and Splunk HEC sinks.

Secrets (a token from ``token_env``/``token_file``, custom headers) go in the request only:
errors name the sink's scheme, host and port (:meth:`AlertSpec.where`), never the URL path,
headers or body, since a Slack or Teams webhook URL is itself a credential.
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.request
from typing import Any

from monitor import __version__
from monitor.sinks.base import TIMEOUT, AlertSpec, SinkError


class Poster:
    def __init__(self, spec: AlertSpec, auth_scheme: str):
        self.spec = spec
        token = spec.token()
        self.headers = {
            "Content-Type": "application/json",
            "User-Agent": f"apiwatch/{__version__}",
            **dict(spec.headers),
        }
        if token:
            self.headers["Authorization"] = f"{auth_scheme} {token}"
        self.context = spec.tls_context() if (spec.url or "").startswith("https:") else None

    def post(self, body: Any, extra_headers: dict[str, str]) -> bytes:
        data = json.dumps(body, ensure_ascii=False).encode()
        request = urllib.request.Request(
            self.spec.url or "", data=data, headers={**self.headers, **extra_headers}, method="POST"
        )
        where = self.spec.where()
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT, context=self.context) as answer:
                return answer.read(65536)
        except urllib.error.HTTPError as exc:
            raise SinkError(f"{where}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError, ssl.SSLError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise SinkError(f"{where}: {reason}") from None
