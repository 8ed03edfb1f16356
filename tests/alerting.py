"""What the alert tests share: Squid lines, a config with [[alerts]] tables, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from monitor.cli import main

T0 = 1795741200  # 2026-11-27T00:00:00Z


def squid_line(
    i: int, host: str = "api.openai.com", client: str = "10.0.0.1", ts: float | None = None
) -> str:
    """A native Squid access.log line (CONNECT through the proxy)."""
    t = T0 + i if ts is None else ts
    return (
        f"{t:.3f}    120 {client} TCP_TUNNEL/200 {1000 + i} CONNECT {host}:443 - "
        "HIER_DIRECT/1.2.3.4 -\n"
    )


def write_config(path: Path, *alerts: str, extra: str = "") -> Path:
    """A config whose [[alerts]] tables are given as TOML bodies."""
    text = extra + "".join(f"\n[[alerts]]\n{a.strip()}\n" for a in alerts)
    path.write_text(text)
    return path


def cli(config: Path, db: Path, *args: str, ok: tuple[int, ...] = (0,)):
    result = CliRunner().invoke(
        main, ["--config", str(config), "--db", str(db), *map(str, args)], catch_exceptions=False
    )
    assert result.exit_code in ok, result.output + result.stderr
    return result


def cli_process_async(config: Path, db: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "monitor", "--config", str(config), "--db", str(db), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def incidents(config: Path, db: Path) -> dict[str, dict]:
    out = cli(config, db, "incidents", "--json").stdout
    return {d["id"]: d for d in map(json.loads, out.splitlines())}


#: hosts of providers that raise a finding each from a CN egress (besides api.openai.com,
#: api.anthropic.com and openrouter.ai): severity info (no region policy known), then high
OTHER_PROVIDERS = (
    "api.cohere.ai", "api.groq.com", "api.together.xyz", "api.fireworks.ai", "api.perplexity.ai",
    "api.mistral.ai", "api.x.ai", "generativelanguage.googleapis.com",
)  # fmt: skip


def site_per_client(clients: list[str]) -> str:
    """Config sites, one per client (in CN): each client's traffic is a finding of its own
    (the clients of one site calling one provider share one finding, and one alert)."""
    return "".join(
        f'[sites.s{i}]\nclient_cidrs = ["{c}/32"]\ncountry = "CN"\n' for i, c in enumerate(clients)
    )


def findings(config: Path, db: Path) -> dict[str, dict]:
    """The findings (what alerts are about), by id, each over its latest detail row (whose
    title, client and host an alert names)."""
    detail = sorted(incidents(config, db).values(), key=lambda i: (i["last_seen"], i["id"]))
    latest = {i["finding_id"]: i for i in detail}
    out = cli(config, db, "findings", "--json").stdout
    return {d["id"]: {**latest[d["id"]], **d} for d in map(json.loads, out.splitlines())}


def jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
