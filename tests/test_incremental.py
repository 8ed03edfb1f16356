"""Incremental scans on real files: growth, rotation, copytruncate, compressed rotation."""

from __future__ import annotations

import gzip
import json
import os
import shutil

from click.testing import CliRunner

from monitor.cli import main


def line(i: int, host: str = "api.openai.com", client: str = "10.0.0.1") -> str:
    return f"{1795741200 + i}.{i % 1000:03d}    120 {client} TCP_TUNNEL/200 {1000 + i} CONNECT {host}:443 - HIER_DIRECT/1.2.3.4 -\n"


def write(path, lines, mode="w"):
    with open(path, mode) as f:
        f.writelines(lines)


def scan(db, *paths, extra=()):
    result = CliRunner().invoke(
        main,
        ["--db", str(db), "scan", *map(str, paths), "--egress-country", "CN", "--json", *extra],
    )
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout)


def total(db) -> int:
    out = CliRunner().invoke(main, ["--db", str(db), "incidents", "--json"]).stdout
    return sum(json.loads(x)["count"] for x in out.splitlines())


def evidence(db) -> list[str]:
    out = CliRunner().invoke(main, ["--db", str(db), "incidents", "--json"]).stdout
    return sorted(e for x in out.splitlines() for e in json.loads(x)["evidence"])


N = 60  # lines: past HEAD_BYTES, so the file's identity is stable as it grows


def test_small_files_are_simply_read_again(tmp_path, db):
    """Under HEAD_BYTES a file's identity is not stable yet: it is re-read, never recounted."""
    log = tmp_path / "access.log"
    write(log, [line(i) for i in range(3)])
    scan(db, log)
    write(log, [line(3)], "a")
    again = scan(db, log)
    assert (again["records"], again["stored"], again["duplicates"]) == (4, 1, 3)
    assert total(db) == 4


def test_growth_reads_only_what_is_new(tmp_path, db):
    log = tmp_path / "access.log"
    write(log, [line(i) for i in range(N)])
    assert scan(db, log)["records"] == N
    write(log, [line(i) for i in range(N, N + 5)], "a")
    second = scan(db, log)
    assert (second["records"], second["stored"]) == (5, 5)
    assert second["skipped_bytes"] == sum(len(line(i)) for i in range(N))
    assert scan(db, log)["records"] == 0
    assert total(db) == N + 5
    # line numbers stay those of the file, not of the part read
    write(log, [line(N + 5, client="10.9.9.9")], "a")
    scan(db, log)
    assert any(e.endswith(f"access.log:{N + 6}") for e in evidence(db))


def test_line_being_written_is_read_again_whole(tmp_path, db):
    log = tmp_path / "access.log"
    whole = line(N)
    write(log, [*(line(i) for i in range(N)), whole[:40]])  # the writer is mid-line
    first = scan(db, log)
    assert (first["records"], first["malformed"]) == (N, 1)
    write(log, [whole[40:], line(N + 1)], "a")
    second = scan(db, log)
    assert (second["records"], second["malformed"], second["stored"]) == (2, 0, 2)
    assert total(db) == N + 2


def test_unterminated_last_line_is_not_lost_or_doubled(tmp_path, db):
    log = tmp_path / "access.log"
    write(log, [*(line(i) for i in range(N)), line(N).rstrip("\n")])
    assert scan(db, log)["stored"] == N + 1
    again = scan(db, log)  # read again (no newline yet), de-duplicated
    assert (again["records"], again["stored"]) == (1, 0)
    write(log, ["\n", line(N + 1)], "a")
    assert scan(db, log)["stored"] == 1
    assert total(db) == N + 2


def test_rename_rotation(tmp_path, db):
    log, rotated = tmp_path / "access.log", tmp_path / "access.log.1"
    write(log, [line(i) for i in range(N)])
    scan(db, log)
    write(log, [line(i) for i in range(N, N + 2)], "a")  # written after the scan, before rotation
    os.rename(log, rotated)
    write(log, [line(i) for i in range(1000, 1003)])  # the new file
    summary = scan(db, rotated, log)
    assert summary["records"] == 2 + 3 and summary["stored"] == 5
    assert total(db) == N + 5


def test_compressed_rotation(tmp_path, db):
    log = tmp_path / "access.log"
    write(log, [line(i) for i in range(N)])
    scan(db, log)
    write(log, [line(i, client="10.7.7.7") for i in range(N, N + 3)], "a")
    gz = tmp_path / "access.log.1.gz"
    gz.write_bytes(gzip.compress(log.read_bytes()))
    log.unlink()
    summary = scan(db, gz)
    assert (summary["records"], summary["stored"]) == (3, 3)
    assert total(db) == N + 3
    assert any(e.endswith(f"access.log.1.gz:{N + 1}") for e in evidence(db))


def test_copytruncate(tmp_path, db):
    log = tmp_path / "access.log"
    write(log, [line(i) for i in range(N)])
    scan(db, log)
    write(log, [line(i) for i in range(N, N + 2)], "a")
    shutil.copy(log, tmp_path / "access.log.1")
    with open(log, "r+") as f:  # truncate in place: same inode, new content
        f.truncate(0)
    write(log, [line(i, client="10.0.0.2") for i in range(2000, 2000 + N)], "a")
    summary = scan(db, tmp_path / "access.log.1", log)
    assert summary["records"] == 2 + N and summary["stored"] == 2 + N
    assert total(db) == 2 * N + 2


def test_full_rereads_but_counts_nothing_twice(tmp_path, db):
    log = tmp_path / "access.log"
    write(log, [line(i) for i in range(N)])
    scan(db, log)
    again = scan(db, log, extra=("--full",))
    assert (again["records"], again["stored"], again["duplicates"]) == (N, 0, N)
    assert total(db) == N
