"""Request signatures (``rules/clients.yaml``): what an LLM API request looks like, and who
sends it.

The provider catalogue knows destinations by name. Relays, shell sites and self-hosted
gateways have names nobody has catalogued yet, but their traffic still looks like an LLM
API: the URL path (``/v1/chat/completions``), the SDK in the User-Agent (``OpenAI/Python``).
:class:`Signatures` answers those questions, once per distinct value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from monitor.errors import ApiwatchError
from monitor.yamlfile import YamlError, safe_load

CLIENTS_FILE = "clients.yaml"
PATH_KINDS = ("api", "relay_admin")
_ID_RE = re.compile(r"[a-z][a-z0-9_]*\Z")
_URL_RE = re.compile(r"https?://[^\s/]+\S*\Z")
_PATH_RE = re.compile(r"/[\x21-\x7e]*\Z")


class SignatureError(ApiwatchError, ValueError):
    """``clients.yaml`` is invalid; the message names the file, the entry and the reason."""


@dataclass(frozen=True, slots=True)
class Client:
    id: str
    name: str
    llm: bool  # talks only to LLM APIs: its traffic is evidence on its own


class Signatures:
    """API paths, User-Agent prefixes and JA4 values, compiled for lookups."""

    def __init__(
        self,
        paths: list[tuple[str, str, str]],  # (id, kind, pattern)
        agents: list[tuple[str, Client]],  # (prefix, client)
        tls: dict[str, Client],
        version: str,
        refusals: list[tuple[str, frozenset[int], str]] = (),  # (id, statuses, marker)
    ):
        self.version = version
        self.tls = tls
        self.refusals = tuple(refusals)
        # one alternative per pattern; a pattern starts with "/", so a match is at a segment
        # boundary; "*" stays inside a segment; a trailing "/" lets the path go on
        alternatives = []
        self._path_ids: list[str] = []
        for i, (pid, _kind, pattern) in enumerate(paths):
            body = "[^/]*".join(re.escape(part) for part in pattern.split("*"))
            tail = ".*" if pattern.endswith("/") else ""
            alternatives.append(f"(?P<p{i}>{body}{tail})")
            self._path_ids.append(pid)
        #: for each pattern its longest literal piece: a URL without one of them is no match
        pieces = {max(p.split("*"), key=len).encode() for _, _, p in paths}
        self.markers = tuple(sorted(m for m in pieces if not any(n in m for n in pieces - {m})))
        self._paths = re.compile(f"(?:{'|'.join(alternatives)})\\Z" if paths else "(?!)")
        self._agents = sorted(agents, key=lambda a: -len(a[0]))
        self.api_path = lru_cache(maxsize=65536)(self._api_path)
        self.user_agent = lru_cache(maxsize=16384)(self._user_agent)

    def _api_path(self, url: str | None) -> str | None:
        """Id of the API path signature ``url`` (a URL or a path) ends with, or None."""
        if not url:
            return None
        start = url.find("://")
        if start >= 0:
            slash = url.find("/", start + 3)
            if slash < 0:
                return None
            url = url[slash:]
        path = url.split("?", 1)[0].split("#", 1)[0]
        m = self._paths.search(path)
        return self._path_ids[int(m.lastgroup[1:])] if m else None  # type: ignore[index]

    def shape(self, url: str | None, user_agent: str | None, ja4: str | None = None) -> str | None:
        """Why a request looks like an LLM API call by itself (``path:ID``,
        ``user-agent:ID``, ``ja4:ID``), or None: its URL path, an LLM client's User-Agent,
        or a JA4 only LLM clients are known to send (``llm: true``; a shared TLS stack's
        JA4 is evidence on the record, never a match)."""
        path = self.api_path(url)
        if path is not None:
            return f"path:{path}"
        client = self.user_agent(user_agent)
        if client is not None and client.llm:
            return f"user-agent:{client.id}"
        client = self.tls_client(ja4)
        if client is not None and client.llm:
            return f"ja4:{client.id}"
        return None

    def _user_agent(self, agent: str | None) -> Client | None:
        """The client a User-Agent names (longest prefix, at its start or after a space)."""
        if not agent:
            return None
        for prefix, client in self._agents:
            if agent.startswith(prefix) or f" {prefix}" in agent:
                return client
        return None

    def refusal(self, status: int | None, body: str | None) -> str | None:
        """Id of the provider refusal an error response is (its status and body), or None."""
        if not body or status is None or status < 400:
            return None
        for rid, statuses, marker in self.refusals:
            if status in statuses and marker in body:
                return rid
        return None

    def tls_client(self, ja4: str | None) -> Client | None:
        return self.tls.get(ja4) if ja4 else None

    @classmethod
    def load(cls, rules_dir: Path | None = None) -> Signatures:
        if rules_dir is None:
            from monitor.resources import rules_dir as bundled_rules_dir

            rules_dir = bundled_rules_dir()
        return _load(Path(rules_dir) / CLIENTS_FILE)


@lru_cache(maxsize=1)
def bundled_signatures() -> Signatures:
    return Signatures.load()


def _load(path: Path) -> Signatures:
    def fail(entry: str, reason: str) -> SignatureError:
        return SignatureError(f"{path}: {entry}: {reason}")

    try:
        data = safe_load(path.read_text(encoding="utf-8"))
    except (OSError, YamlError) as exc:
        raise SignatureError(f"{path}: cannot read: {exc}") from None
    if not isinstance(data, dict):
        raise fail("(top level)", "expected a mapping")
    unknown = set(data) - {"version", "api_paths", "user_agents", "refusals", "tls_clients"}
    if unknown:
        raise fail("(top level)", f"unknown key(s) {', '.join(sorted(unknown))}")
    seen: set[str] = set()

    def entries(key: str, allowed: set[str]) -> list[tuple[str, dict[str, Any]]]:
        items = data.get(key) or []
        if not isinstance(items, list):
            raise fail(key, "must be a list")
        out = []
        for n, item in enumerate(items, 1):
            eid = item.get("id") if isinstance(item, dict) else None
            entry = eid if isinstance(eid, str) else f"{key}[{n}]"
            if not isinstance(item, dict):
                raise fail(entry, "must be a mapping")
            if not isinstance(eid, str) or not _ID_RE.match(eid):
                raise fail(entry, "id must be snake_case ([a-z][a-z0-9_]*)")
            if eid in seen:
                raise fail(entry, "duplicate id")
            seen.add(eid)
            if set(item) - allowed:
                raise fail(entry, f"unknown key(s) {', '.join(sorted(set(item) - allowed))}")
            sources = item.get("sources")
            if not isinstance(sources, list) or not sources:
                raise fail(entry, "missing sources")
            for src in sources:
                if not isinstance(src, str) or not _URL_RE.match(src):
                    raise fail(entry, f"source {src!r} is not an http(s) URL")
            out.append((entry, item))
        return out

    def strings(entry: str, item: dict[str, Any], key: str) -> list[str]:
        value = item.get(key)
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, str) and v for v in value)
        ):
            raise fail(entry, f"'{key}' must be a non-empty list of strings")
        return value

    paths: list[tuple[str, str, str]] = []
    for entry, item in entries("api_paths", {"id", "kind", "paths", "sources", "note"}):
        if item.get("kind") not in PATH_KINDS:
            raise fail(entry, f"kind must be one of {', '.join(PATH_KINDS)}")
        for pattern in strings(entry, item, "paths"):
            if not _PATH_RE.match(pattern) or "**" in pattern:
                raise fail(entry, f"bad path {pattern!r}: must start with '/', printable ASCII")
            paths.append((entry, item["kind"], pattern))
    agents: list[tuple[str, Client]] = []
    allowed = {"id", "name", "prefixes", "llm", "sources", "note"}
    for entry, item in entries("user_agents", allowed):
        if not isinstance(item.get("name"), str) or not isinstance(item.get("llm"), bool):
            raise fail(entry, "'name' (text) and 'llm' (true or false) are required")
        client = Client(entry, item["name"], item["llm"])
        agents.extend((prefix, client) for prefix in strings(entry, item, "prefixes"))
    refusals: list[tuple[str, frozenset[int], str]] = []
    for entry, item in entries("refusals", {"id", "provider", "statuses", "marker", "sources"}):
        statuses = item.get("statuses")
        if not isinstance(statuses, list) or not all(
            isinstance(v, int) and 400 <= v < 600 for v in statuses
        ):
            raise fail(entry, "'statuses' must be a list of HTTP error statuses (400-599)")
        if not isinstance(item.get("marker"), str) or not item["marker"].strip():
            raise fail(entry, "'marker' (the text the response body holds) is required")
        if not isinstance(item.get("provider"), str):
            raise fail(entry, "'provider' (a catalogue id) is required")
        refusals.append((entry, frozenset(statuses), item["marker"]))
    tls: dict[str, Client] = {}
    allowed = {"id", "name", "ja4", "llm", "measured", "sources", "note"}
    for entry, item in entries("tls_clients", allowed):
        if not isinstance(item.get("name"), str) or not isinstance(item.get("llm", False), bool):
            raise fail(entry, "'name' (text) is required; 'llm' is true or false")
        _measured(fail, entry, item.get("measured", []))
        client = Client(entry, item["name"], item.get("llm", False))
        for value in strings(entry, item, "ja4"):
            if not re.fullmatch(
                r"[tqd][0-9s]{2}[di]\d{4}[0-9a-z]{2}_[0-9a-f]{12}_[0-9a-f]{12}", value
            ):
                raise fail(entry, f"{value!r} is not a JA4 fingerprint")
            if value in tls:
                raise fail(entry, f"{value} is already listed by {tls[value].id}")
            tls[value] = client
    version = data.get("version")
    if not isinstance(version, str):
        raise fail("(top level)", "'version' is required")
    return Signatures(paths, agents, tls, version, refusals)


#: what a measurement of a JA4 records (tls_clients[].measured)
MEASURED_KEYS = ("client", "tls", "date", "method")


def _measured(fail, entry: str, items: Any) -> None:
    """``measured``: how each JA4 was measured here (a list of {client, tls, date, method})."""
    if not isinstance(items, list):
        raise fail(entry, "'measured' must be a list")
    for m in items:
        if (
            not isinstance(m, dict)
            or set(m) != set(MEASURED_KEYS)
            or not all(isinstance(m[k], str) and m[k].strip() for k in MEASURED_KEYS)
        ):
            raise fail(entry, f"each 'measured' item needs exactly {', '.join(MEASURED_KEYS)}")
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", m["date"]):
            raise fail(entry, f"measured date {m['date']!r} is not YYYY-MM-DD")
