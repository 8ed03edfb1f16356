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


def jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
