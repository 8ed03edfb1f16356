"""YAML documents are parsed once and then read back from the cache directory."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from monitor import yamlfile
from monitor.yamlfile import YamlError, safe_load, safe_load_all

ROOT = Path(__file__).resolve().parent.parent
DOC = "id: x\nhosts: [a.example, b.example]\nn: 3\nok: true\nratio: 0.5\nnone: null\n"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("APIWATCH_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "yaml"


def test_a_cached_document_is_not_parsed_again(cache, monkeypatch):
    first = safe_load(DOC)
    assert first == {"id": "x", "hosts": ["a.example", "b.example"], "n": 3, "ok": True,
                     "ratio": 0.5, "none": None}  # fmt: skip
    assert len(list(cache.iterdir())) == 1

    def no_parse(text, how):
        raise AssertionError("parsed again")

    monkeypatch.setattr(yamlfile, "_parse", no_parse)
    assert safe_load(DOC) == first
    with pytest.raises(AssertionError):  # another text, or another way of reading it
        safe_load(DOC + "m: 1\n")
    with pytest.raises(AssertionError):
        safe_load(DOC, unique_keys=True)


def test_a_damaged_entry_is_parsed_again(cache):
    want = safe_load_all("a: 1\n---\nb: 2\n")
    assert want == [{"a": 1}, {"b": 2}]
    (entry,) = cache.iterdir()
    entry.write_bytes(b"\xff\x00 not marshal")
    assert safe_load_all("a: 1\n---\nb: 2\n") == want
    assert entry.read_bytes() != b"\xff\x00 not marshal"  # and rewritten


def test_an_unwritable_cache_only_costs_a_parse(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("APIWATCH_CACHE_DIR", str(blocker / "sub"))
    assert safe_load(DOC)["id"] == "x"
    assert safe_load(DOC)["id"] == "x"


def test_errors_name_the_line(cache):
    with pytest.raises(YamlError, match="line 2"):
        safe_load("a: 1\nb: [unclosed\n")
    assert safe_load("a: 1\na: 2\n") == {"a": 2}  # YAML keeps the last
    with pytest.raises(YamlError, match="duplicate key 'a'"):
        safe_load("a: 1\na: 2\n", unique_keys=True)
    assert list(cache.iterdir()) == [next(cache.iterdir())]  # only the good one was kept


def test_a_scan_with_a_warm_cache_does_not_import_pyyaml(tmp_path):
    log = tmp_path / "access.log"
    log.write_bytes(b"1732752001.203 7 10.1.8.1 TCP_TUNNEL/200 24 CONNECT api.openai.com:443 - "
                    b"HIER_DIRECT/172.66.0.243 -\n")  # fmt: skip
    code = (
        "import sys\nfrom monitor.cli import main\n"
        f"main(['--db', {str(tmp_path / 'a.db')!r}, 'scan', {str(log)!r}], standalone_mode=False)\n"
        "print('yaml' in sys.modules, 'ssl' in sys.modules)\n"
    )
    env = {"APIWATCH_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin",
           "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}  # fmt: skip
    runs = [
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       cwd=ROOT, check=True).stdout.split()[-2:]
        for _ in range(2)
    ]  # fmt: skip
    assert runs == [["True", "False"], ["False", "False"]]


def test_a_full_cache_disk_leaves_no_partial_entry(small_fs, monkeypatch):
    """On a real full tmpfs the document is still read, and no temporary file stays behind."""
    if small_fs is None:
        pytest.skip("cannot mount a tmpfs here (not root)")
    monkeypatch.setenv("APIWATCH_CACHE_DIR", str(small_fs / "cache"))
    (small_fs / "cache" / "yaml").mkdir(parents=True)
    fd = os.open(small_fs / "filler", os.O_WRONLY | os.O_CREAT)
    try:  # fill the 1 MB tmpfs to its last block
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    doc = "hosts:\n" + "".join(f"- h{i}.example\n" for i in range(2000))
    assert len(safe_load(doc)["hosts"]) == 2000
    assert list((small_fs / "cache" / "yaml").iterdir()) == []
