#!/usr/bin/env python3
"""Maintainer script: rebuild the embedded geolocation databases from registry packages.

Never run at install or run time. It needs ``npm`` (for ``npm pack``), network access to the
npm registry, and the test extra (``mmdb-writer``, ``netaddr``, ``geoip2``)::

    python geodata/build.py                      # both databases, latest npm versions
    python geodata/build.py --only asn           # one of them
    python geodata/build.py --from DIR           # use already-downloaded .tgz files in DIR
    python geodata/build.py --check              # only verify the shipped .mmdb.xz files

What it does, per database:

country
    ``@ip-location-db/geo-whois-asn-country-mmdb`` ships a *flat* MMDB (``{"country_code":
    "US"}``, type ``country ipvAll``) that ``geoip2.database.Reader.country()`` rejects.
    Every network is re-written into the GeoIP2-Country schema (``{"country": {"iso_code":
    "US"}}``), ``database_type`` "apiwatch-Country (source=geo-whois-asn-country)".
asn
    ``@ip-location-db/asn`` ships CSVs ``start,end,asn,org`` (IPv4 and IPv6). Ranges become
    CIDRs; the result is a GeoLite2-ASN-schema MMDB (``autonomous_system_number``,
    ``autonomous_system_organization``), ``database_type`` "apiwatch-ASN
    (compat=GeoLite2-ASN)" so that ``Reader.asn()`` accepts it.

Networks are grouped per record into one ``netaddr.IPSet`` built from a list (adding ranges to
an IPSet one at a time is orders of magnitude slower), then inserted with one
``MMDBWriter.insert_network`` call per record. ``build_epoch`` in the written file is the
*upstream data* time, not the conversion time, so the same input gives byte-identical output.

Each result is verified (random sample against the source, plus fixed spot checks), compressed
with xz and written atomically into ``geodata/`` with ``manifest.json`` (read by
``monitor.geo``) and the upstream licence notices.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import hashlib
import ipaddress
import json
import lzma
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent

COUNTRY_PKG = "@ip-location-db/geo-whois-asn-country-mmdb"
ASN_PKG = "@ip-location-db/asn"

COUNTRY_TYPE = "apiwatch-Country (source=geo-whois-asn-country)"
ASN_TYPE = "apiwatch-ASN (compat=GeoLite2-ASN)"

COUNTRY_FILE = "geo-whois-asn-country.mmdb"
ASN_FILE = "ipldb-asn.mmdb"

ATTRIBUTION = (
    "IP geolocation data: sapics/ip-location-db (https://github.com/sapics/ip-location-db); "
    "NRO RIR statistics (https://www.nro.net/, CC-BY-4.0); RouteViews "
    "(https://www.routeviews.org/, CC-BY-4.0); IP Geolocation by DB-IP (https://db-ip.com, CC-BY-4.0)"
)

# (ip, expected country or None, expected asn or None)
SPOT_CHECKS = [
    ("8.8.8.8", "US", 15169),
    ("114.114.114.114", "CN", None),
    ("160.79.104.10", "US", 399358),
    ("172.64.0.1", None, 13335),
    ("2001:4860:4860::8888", "US", 15169),
]

# Upstream licence notices copied into geodata/ (source file in package -> shipped name).
LICENCE_FILES = {
    "country": {"NRO_LICENSE": "LICENSE-NRO.txt"},
    "asn": {
        "NRO_LICENSE": "LICENSE-NRO.txt",
        "ROUTEVIEWS-LICENSE": "LICENSE-ROUTEVIEWS.txt",
        "DBIP-LICENSE": "LICENSE-DBIP.txt",
        "MODIFICATIONS": "MODIFICATIONS-ASN.txt",
    },
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- fetching


def npm_pack(package: str, version: str, dest: Path) -> Path:
    """``npm pack`` one package into ``dest``; return the tarball path."""
    spec = f"{package}@{version}"
    log(f"npm pack {spec}")
    out = subprocess.run(
        ["npm", "pack", "--silent", "--pack-destination", str(dest), spec],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    name = out.splitlines()[-1].strip()
    return dest / name


def find_tgz(directory: Path, package: str) -> Path:
    stem = package.lstrip("@").replace("/", "-")
    pattern = re.compile(re.escape(stem) + r"-(\d+\.\d+\.\d+)\.tgz$")
    hits = sorted(p for p in directory.iterdir() if pattern.match(p.name))
    if not hits:
        raise SystemExit(f"no {stem}-<version>.tgz in {directory}")
    return hits[-1]


def unpack(tgz: Path, dest: Path) -> tuple[Path, dict]:
    with tarfile.open(tgz) as tf:
        tf.extractall(dest, filter="data")
    pkg_dir = dest / "package"
    meta = json.loads((pkg_dir / "package.json").read_text(encoding="utf-8"))
    return pkg_dir, meta


def version_epoch(version: str) -> int:
    """``2.3.2026061719`` -> epoch of 2026-06-17 19:00 UTC (sapics encodes YYYYMMDDHH)."""
    m = re.search(r"(\d{10})$", version)
    if not m:
        raise SystemExit(f"cannot read a data date from package version {version!r}")
    return int(datetime.strptime(m.group(1), "%Y%m%d%H").replace(tzinfo=UTC).timestamp())


def iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- writing


def _writer(database_type: str, description: str, epoch: int, int_type: str = "auto"):
    from mmdb_writer import MMDBWriter

    class _Writer(MMDBWriter):
        def _build_meta(self):  # fixed build_epoch: reproducible output
            meta = super()._build_meta()
            meta["build_epoch"] = epoch
            return meta

    return _Writer(
        ip_version=6,
        ipv4_compatible=True,
        database_type=database_type,
        languages=["en"],
        description={"en": description},
        int_type=int_type,
    )


def write_grouped(writer, groups: dict, make_record) -> int:
    from netaddr import IPSet

    n = 0
    for key, cidrs in groups.items():
        writer.insert_network(IPSet(cidrs), make_record(key))
        n += 1
    return n


def build_country(src: Path, out: Path, epoch: int) -> dict:
    import maxminddb

    groups: dict[str, list[str]] = defaultdict(list)
    count = 0
    with maxminddb.open_database(str(src)) as reader:
        for network, record in reader:
            cc = (record or {}).get("country_code")
            if not cc:
                continue
            groups[cc.upper()].append(str(network))
            count += 1
    log(f"country: {count} networks, {len(groups)} distinct codes; writing")
    writer = _writer(
        COUNTRY_TYPE,
        "Country (GeoFeed > RIR WHOIS > RIR ASN), sapics/ip-location-db geo-whois-asn-country,"
        " rebuilt into the GeoIP2-Country schema by apiwatch",
        epoch,
    )
    write_grouped(writer, groups, lambda cc: {"country": {"iso_code": cc}})
    writer.to_db_file(str(out))
    return {"networks": count, "records": len(groups)}


def read_asn_csv(paths: list[Path]):
    """Yield (start, end, asn, org) with ip_address objects."""
    for path in paths:
        with path.open(newline="", encoding="utf-8") as fh:
            for lineno, row in enumerate(csv.reader(fh), 1):
                if len(row) != 4:
                    raise SystemExit(f"{path}:{lineno}: expected 4 fields, got {len(row)}")
                asn = int(row[2])
                if asn <= 0:
                    continue
                yield ipaddress.ip_address(row[0]), ipaddress.ip_address(row[1]), asn, row[3]


def build_asn(csvs: list[Path], out: Path, epoch: int) -> dict:
    groups: dict[tuple[int, str], list[str]] = defaultdict(list)
    ranges = 0
    for start, end, asn, org in read_asn_csv(csvs):
        ranges += 1
        groups[(asn, org)].extend(str(n) for n in ipaddress.summarize_address_range(start, end))
    log(f"asn: {ranges} ranges, {len(groups)} distinct (asn, org) records; writing")
    writer = _writer(
        ASN_TYPE,
        "Origin ASN (RouteViews > RIR > DB-IP ASN Lite), sapics/ip-location-db asn CSV,"
        " rebuilt into the GeoLite2-ASN schema by apiwatch",
        epoch,
        int_type="u32",
    )
    write_grouped(
        writer,
        groups,
        lambda k: {"autonomous_system_number": k[0], "autonomous_system_organization": k[1]},
    )
    writer.to_db_file(str(out))
    return {"networks": ranges, "records": len(groups)}


# --------------------------------------------------------------------------- verifying


def random_ipv4(rng: random.Random, n: int) -> list[str]:
    out = []
    while len(out) < n:
        ip = ipaddress.IPv4Address(rng.getrandbits(32))
        if ip.is_global:
            out.append(str(ip))
    return out


def verify_country(built: Path, src: Path | None, sample: int = 20000) -> None:
    import geoip2.database
    import geoip2.errors
    import maxminddb

    with geoip2.database.Reader(str(built)) as r:
        assert "Country" in r.metadata().database_type
        for ip, cc, _asn in SPOT_CHECKS:
            if cc is None:
                continue
            got = r.country(ip).country.iso_code
            if got != cc:
                raise SystemExit(f"country spot check failed: {ip} -> {got}, expected {cc}")
            log(f"country spot check {ip} -> {got} ok")
        if src is None:
            return
        rng = random.Random(1)
        mismatches = 0
        with maxminddb.open_database(str(src)) as s:
            for ip in random_ipv4(rng, sample):
                want = (s.get(ip) or {}).get("country_code")
                try:
                    got = r.country(ip).country.iso_code
                except geoip2.errors.AddressNotFoundError:
                    got = None
                mismatches += want != got
        log(f"country: {mismatches} mismatches in {sample} random IPv4 vs source")
        if mismatches:
            raise SystemExit("country verification failed")


def verify_asn(built: Path, csvs: list[Path] | None, sample: int = 20000) -> None:
    import geoip2.database
    import geoip2.errors

    with geoip2.database.Reader(str(built)) as r:
        assert "GeoLite2-ASN" in r.metadata().database_type
        for ip, _cc, asn in SPOT_CHECKS:
            if asn is None:
                continue
            got = r.asn(ip)
            if got.autonomous_system_number != asn:
                raise SystemExit(f"asn spot check failed: {ip} -> {got}, expected {asn}")
            log(f"asn spot check {ip} -> {asn} {got.autonomous_system_organization} ok")
        if not csvs:
            return
        starts: list[int] = []
        rows: list[tuple[int, int]] = []
        for start, end, asn, _org in read_asn_csv([p for p in csvs if "ipv4" in p.name]):
            starts.append(int(start))
            rows.append((int(end), asn))
        rng = random.Random(2)
        mismatches = 0
        for ip in random_ipv4(rng, sample):
            n = int(ipaddress.IPv4Address(ip))
            i = bisect.bisect_right(starts, n) - 1
            want = rows[i][1] if i >= 0 and n <= rows[i][0] else None
            try:
                got = r.asn(ip).autonomous_system_number
            except geoip2.errors.AddressNotFoundError:
                got = None
            mismatches += want != got
        log(f"asn: {mismatches} mismatches in {sample} random IPv4 vs CSV")
        if mismatches:
            raise SystemExit("asn verification failed")


# --------------------------------------------------------------------------- shipping


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_copy_bytes(data_src: Path, dest: Path, compress: bool) -> None:
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, data_src.open("rb") as src:
            if compress:
                comp = lzma.LZMACompressor(preset=9 | lzma.PRESET_EXTREME)
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    out.write(comp.compress(chunk))
                out.write(comp.flush())
            else:
                shutil.copyfileobj(src, out)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def update_manifest(out_dir: Path, key: str, entry: dict) -> None:
    import fcntl

    path = out_dir / "manifest.json"
    dir_fd = os.open(out_dir, os.O_RDONLY)
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX)  # two --only builds may run side by side
        manifest = {"format": 1, "attribution": ATTRIBUTION, "databases": {}}
        if path.exists():
            manifest = json.loads(path.read_text(encoding="utf-8"))
        manifest["attribution"] = ATTRIBUTION
        manifest.setdefault("databases", {})[key] = entry
        manifest["databases"] = dict(sorted(manifest["databases"].items()))
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        os.close(dir_fd)


def ship(
    key: str,
    built: Path,
    out_dir: Path,
    pkg_dir: Path,
    meta: dict,
    info: dict,
    data_epoch: int,
    keep_mmdb: bool,
) -> None:
    import maxminddb

    xz = out_dir / (built.name + ".xz")
    log(f"{key}: compressing to {xz.name}")
    atomic_copy_bytes(built, xz, compress=True)
    if keep_mmdb:
        atomic_copy_bytes(built, out_dir / built.name, compress=False)
    for src_name, dest_name in LICENCE_FILES[key].items():
        if (pkg_dir / src_name).exists():
            atomic_copy_bytes(pkg_dir / src_name, out_dir / dest_name, compress=False)
    with maxminddb.open_database(str(built)) as r:
        md = r.metadata()
    entry = {
        "file": xz.name,
        "name": built.name.removesuffix(".mmdb"),
        "capability": key,
        "database_type": md.database_type,
        "data_date": iso(data_epoch)[:10],
        "build_epoch": md.build_epoch,
        "built_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source_package": f"{meta['name']}@{meta['version']}",
        "source_license": meta.get("license"),
        "data_license": "CC-BY-4.0",
        "networks": info["networks"],
        "records": info["records"],
        "mmdb_size": built.stat().st_size,
        "mmdb_sha256": sha256(built),
        "xz_size": xz.stat().st_size,
        "xz_sha256": sha256(xz),
    }
    update_manifest(out_dir, key, entry)
    log(f"{key}: {xz.name} {entry['xz_size'] / 1e6:.2f} MB (raw {entry['mmdb_size'] / 1e6:.2f} MB)")


def check_shipped(out_dir: Path) -> None:
    manifest = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory() as tmp:
        for key, entry in manifest["databases"].items():
            xz = out_dir / entry["file"]
            if sha256(xz) != entry["xz_sha256"]:
                raise SystemExit(f"{xz}: sha256 differs from manifest.json")
            raw = Path(tmp) / entry["file"].removesuffix(".xz")
            with lzma.open(xz) as src, raw.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            if sha256(raw) != entry["mmdb_sha256"]:
                raise SystemExit(f"{xz}: decompressed sha256 differs from manifest.json")
            (verify_country if key == "country" else verify_asn)(raw, None)
            log(f"{key}: {entry['file']} ok (data {entry['data_date']})")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=["country", "asn"], action="append")
    ap.add_argument("--out", type=Path, default=HERE, help="output directory (default: geodata/)")
    ap.add_argument("--from", dest="from_dir", type=Path, help="use .tgz files already in DIR")
    ap.add_argument("--country-version", default="latest")
    ap.add_argument("--asn-version", default="latest")
    ap.add_argument("--keep-mmdb", action="store_true", help="also write the uncompressed .mmdb")
    ap.add_argument("--check", action="store_true", help="only verify the shipped files")
    args = ap.parse_args(argv)

    if args.check:
        check_shipped(args.out)
        return 0
    wanted = args.only or ["country", "asn"]
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="apiwatch-geodata-") as tmp_s:
        tmp = Path(tmp_s)
        for key in wanted:
            t0 = time.monotonic()
            package, version = (
                (COUNTRY_PKG, args.country_version)
                if key == "country"
                else (ASN_PKG, args.asn_version)
            )
            tgz = (
                find_tgz(args.from_dir, package)
                if args.from_dir
                else npm_pack(package, version, tmp)
            )
            pkg_dir, meta = unpack(tgz, tmp / key)
            data_epoch = version_epoch(meta["version"])
            log(f"{key}: {meta['name']}@{meta['version']} (data {iso(data_epoch)})")
            if key == "country":
                src = pkg_dir / COUNTRY_FILE
                import maxminddb

                with maxminddb.open_database(str(src)) as r:
                    data_epoch = r.metadata().build_epoch  # upstream's own build time
                built = tmp / COUNTRY_FILE
                info = build_country(src, built, data_epoch)
                verify_country(built, src)
            else:
                csvs = [pkg_dir / "asn-ipv4.csv", pkg_dir / "asn-ipv6.csv"]
                built = tmp / ASN_FILE
                info = build_asn(csvs, built, data_epoch)
                verify_asn(built, csvs)
            ship(key, built, args.out, pkg_dir, meta, info, data_epoch, args.keep_mmdb)
            log(f"{key}: done in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
