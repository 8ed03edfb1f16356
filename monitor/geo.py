"""IP address -> scope, country, ASN and organisation, from MaxMind DB files and overrides.

Sources, highest precedence first (see ``docs/geodata.md``):

1. **overrides** - CSV files ``cidr,country,site,asn,org,note``. They apply to *any* address,
   including private ones (a corporate ``10.0.0.0/8 -> DE, site=hq`` is legitimate), and beat
   every database for the fields they set. Per field, the longest matching prefix wins; at equal
   prefixes the file given first wins. The bundled ``geodata/overrides.csv`` always comes last.
2. **user databases** - any MaxMind DB file (GeoIP2/GeoLite2 Country, City, Enterprise, ISP,
   GeoLite2-ASN, DB-IP Lite, or a flat ``country_code`` / ``autonomous_system_number`` file).
3. **system databases** - ``*.mmdb`` in ``/var/lib/GeoIP``, ``/usr/share/GeoIP``,
   ``/usr/local/share/GeoIP`` (the ``geoipupdate`` locations).
4. **embedded** - the two databases shipped in ``geodata/`` as ``.mmdb.xz`` (country:
   sapics geo-whois-asn-country; ASN: sapics/RouteViews/DB-IP origin ASN), decompressed once into
   a cache directory.

Precedence is per capability ("country", "asn"): a source that has no answer for an address,
or no such capability at all, leaves the field to the next one. Only *public* addresses are
looked up in databases; private, loopback, CGNAT, link-local, multicast and reserved or
documentation addresses get ``country=None`` and a ``scope`` saying why, unless an override
labels them. Text that is not an IP address gets ``scope="invalid"`` (``lookup`` never raises
for a bad address).
"""

from __future__ import annotations

import bisect
import csv
import functools
import hashlib
import io
import ipaddress
import json
import lzma
import os
import re
import stat
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monitor.errors import ApiwatchError
from monitor.resources import cache_dir, geodata_dir

if TYPE_CHECKING:  # maxminddb loads with the first database opened, geoip2 for its models only
    import geoip2.database
    import maxminddb

__all__ = [
    "CACHE_SIZE",
    "DEFAULT_SEARCH_DIRS",
    "SCOPES",
    "GeoAnswer",
    "GeoError",
    "GeoResolver",
    "GeoSource",
    "cache_dir",
    "classify",
    "embedded_attribution",
    "load_overrides",
]


def _log():
    """This module's logger (logging loads only when there is something to say)."""
    import logging

    return logging.getLogger(__name__)


#: Every value ``GeoAnswer.scope`` can take. Only "public" addresses reach a database.
SCOPES = (
    "public",
    "private",
    "loopback",
    "cgnat",
    "link-local",
    "reserved",
    "multicast",
    "invalid",
)

#: Where ``geoipupdate`` and distribution packages put MaxMind files.
DEFAULT_SEARCH_DIRS = (
    Path("/var/lib/GeoIP"),
    Path("/usr/share/GeoIP"),
    Path("/usr/local/share/GeoIP"),
)

#: Bound of the per-address memo (distinct IPs).
CACHE_SIZE = 1 << 20

OVERRIDE_COLUMNS = ("cidr", "country", "site", "asn", "org", "note")

# Preferred order of well-known file names inside one search directory.
_NAME_RANK = (
    "GeoIP2-Enterprise",
    "GeoIP2-City",
    "GeoIP2-Country",
    "GeoIP2-ISP",
    "GeoLite2-City",
    "GeoLite2-Country",
    "GeoLite2-ASN",
)


class GeoError(ApiwatchError, ValueError):
    """A database or overrides file that cannot be used; the message names the file (and line)."""


@dataclass(frozen=True, slots=True)
class GeoAnswer:
    ip: str  # canonical text ("invalid": the input as given)
    scope: str  # one of SCOPES
    country: str | None  # ISO 3166-1 alpha-2
    asn: int | None
    org: str | None
    site: str | None  # only from overrides
    country_source: str | None  # "override:<file>:<line>", "mmdb:<file>", "embedded:<name>"
    asn_source: str | None
    network: str | None  # CIDR that answered the country, when known


@dataclass(frozen=True, slots=True)
class GeoSource:
    name: str
    path: str
    database_type: str
    capability: str  # "country" | "asn" | "country+asn"
    build_date: str | None  # YYYY-MM-DD (MMDB build_epoch, or the embedded data date)
    origin: str  # "user" | "system" | "embedded" | "override"


# --------------------------------------------------------------------------- address scope

_V4_SCOPES = [
    ("0.0.0.0/8", "reserved"),  # "this network"
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "cgnat"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved"),  # IETF protocol assignments
    ("192.0.2.0/24", "reserved"),  # TEST-NET-1
    ("192.88.99.0/24", "reserved"),  # deprecated 6to4 relay anycast
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "reserved"),  # benchmarking
    ("198.51.100.0/24", "reserved"),  # TEST-NET-2
    ("203.0.113.0/24", "reserved"),  # TEST-NET-3
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),  # includes 255.255.255.255
]
_V6_SCOPES = [
    ("::/128", "reserved"),  # unspecified
    ("::1/128", "loopback"),
    ("64:ff9b:1::/48", "reserved"),  # local-use NAT64
    ("100::/64", "reserved"),  # discard-only
    ("2001:2::/48", "reserved"),  # benchmarking
    ("2001:10::/28", "reserved"),  # ORCHID
    ("2001:20::/28", "reserved"),  # ORCHIDv2
    ("2001:db8::/32", "reserved"),  # documentation
    ("3fff::/20", "reserved"),  # documentation (RFC 9637)
    ("fc00::/7", "private"),  # unique local
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
]
_V6_GLOBAL = ipaddress.ip_network("2000::/3")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _range_table(rows: list[tuple[str, str]]) -> tuple[list[int], list[tuple[int, str]]]:
    nets = sorted((ipaddress.ip_network(c), s) for c, s in rows)
    return (
        [int(n.network_address) for n, _ in nets],
        [(int(n.broadcast_address), s) for n, s in nets],
    )


_V4_TABLE = _range_table(_V4_SCOPES)
_V6_TABLE = _range_table(_V6_SCOPES)


def _lookup_address(addr: ipaddress.IPv4Address | ipaddress.IPv6Address):
    """The address to classify and look up: IPv4-mapped and NAT64 (64:ff9b::/96) -> IPv4."""
    if addr.version == 6:
        mapped = addr.ipv4_mapped
        if mapped is not None:
            return mapped
        n = int(addr)
        if n >> 32 == int(_NAT64.network_address) >> 32:
            return ipaddress.IPv4Address(n & 0xFFFFFFFF)
        if addr.scope_id:
            return ipaddress.IPv6Address(n)
    return addr


def classify(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Scope of an address (already unmapped by the caller)."""
    n = int(addr)
    starts, ends = _V4_TABLE if addr.version == 4 else _V6_TABLE
    i = bisect.bisect_right(starts, n) - 1
    if i >= 0 and n <= ends[i][0]:
        return ends[i][1]
    if addr.version == 6 and addr not in _V6_GLOBAL:
        return "reserved"  # outside 2000::/3 and not one of the named blocks
    return "public"


# --------------------------------------------------------------------------- overrides


@dataclass(frozen=True, slots=True)
class _Override:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    country: str | None
    site: str | None
    asn: int | None
    org: str | None
    note: str | None
    where: str  # "<path>:<line>"
    rank: int  # file precedence, 0 = highest


@dataclass(slots=True)
class _OverrideTable:
    """Per version: prefix length -> {network int: [overrides, file precedence order]}."""

    by_len: dict[int, dict[int, dict[int, list[_Override]]]] = field(
        default_factory=lambda: {4: {}, 6: {}}
    )
    lengths: dict[int, list[int]] = field(default_factory=lambda: {4: [], 6: []})
    count: int = 0

    def add(self, ov: _Override) -> None:
        v, plen = ov.network.version, ov.network.prefixlen
        bucket = self.by_len[v].setdefault(plen, {})
        bucket.setdefault(int(ov.network.network_address), []).append(ov)
        self.lengths[v] = sorted(self.by_len[v], reverse=True)
        self.count += 1

    def match(self, addr) -> list[_Override]:
        """Matching overrides, most specific first, then by file precedence."""
        v = addr.version
        if not self.lengths[v]:
            return []
        bits = 32 if v == 4 else 128
        n = int(addr)
        out: list[_Override] = []
        table = self.by_len[v]
        for plen in self.lengths[v]:
            hit = table[plen].get((n >> (bits - plen)) << (bits - plen))
            if hit:
                out.extend(hit)
        return out


_ASN_RE = re.compile(r"^(?:AS)?(\d+)$", re.IGNORECASE)
_CC_RE = re.compile(r"^[A-Za-z]{2}$")


def _parse_override_row(path: Path, lineno: int, header: list[str], row: list[str], rank: int):
    where = f"{path}:{lineno}"
    if len(row) != len(header):
        raise GeoError(
            f"{where}: expected {len(header)} fields ({','.join(header)}), got {len(row)}"
        )
    values = {k: (v.strip() or None) for k, v in zip(header, row, strict=True)}
    cidr = values.get("cidr")
    if not cidr:
        raise GeoError(f"{where}: empty cidr")
    try:
        network = ipaddress.ip_network(cidr, strict=True)
    except ValueError as exc:
        raise GeoError(f"{where}: bad cidr {cidr!r}: {exc}") from None
    if network.version == 6 and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:  # ::ffff:a.b.c.d/n -> a.b.c.d/(n-96)
            network = ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}")
    country = values.get("country")
    if country is not None:
        if not _CC_RE.match(country):
            raise GeoError(f"{where}: country must be an ISO 3166-1 alpha-2 code, got {country!r}")
        country = country.upper()
    asn: int | None = None
    if values.get("asn") is not None:
        m = _ASN_RE.match(values["asn"])
        if not m or not 0 < int(m.group(1)) < 2**32:
            raise GeoError(
                f"{where}: asn must be a number like 13335 or AS13335, got {values['asn']!r}"
            )
        asn = int(m.group(1))
    return _Override(
        network=network,
        country=country,
        site=values.get("site"),
        asn=asn,
        org=values.get("org"),
        note=values.get("note"),
        where=where,
        rank=rank,
    )


def load_overrides(path: Path, rank: int = 0) -> list[_Override]:
    """Parse one overrides CSV. Raises :class:`GeoError` naming ``file:line`` on any problem."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise GeoError(f"{path}: cannot read overrides file: {exc}") from None
    header: list[str] | None = None
    seen: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, str] = {}
    out: list[_Override] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            row = next(csv.reader([line], strict=True))
        except csv.Error as exc:
            raise GeoError(f"{path}:{lineno}: {exc}") from None
        if header is None:
            header = [h.strip().lower() for h in row]
            unknown = [h for h in header if h not in OVERRIDE_COLUMNS]
            if "cidr" not in header or unknown or len(set(header)) != len(header):
                raise GeoError(
                    f"{path}:{lineno}: header must be {','.join(OVERRIDE_COLUMNS)}"
                    f" (got {','.join(header)})"
                )
            continue
        ov = _parse_override_row(Path(path), lineno, header, row, rank)
        if ov.network in seen:
            raise GeoError(f"{ov.where}: {ov.network} already given at {seen[ov.network]}")
        seen[ov.network] = ov.where
        out.append(ov)
    return out


# --------------------------------------------------------------------------- databases

_COUNTRY, _ASN = 1, 2
_CAPABILITY_NAME = {_COUNTRY: "country", _ASN: "asn", _COUNTRY | _ASN: "country+asn"}


def _dispatch(database_type: str) -> tuple[str, int]:
    """(geoip2 method or "raw", capabilities) from ``metadata().database_type``."""
    if "Enterprise" in database_type:
        return "enterprise", _COUNTRY | _ASN
    if "City" in database_type:
        return "city", _COUNTRY
    if "Country" in database_type:
        return "country", _COUNTRY
    if "GeoIP2-ISP" in database_type:
        return "isp", _ASN
    if "GeoLite2-ASN" in database_type:
        return "asn", _ASN
    return "raw", 0  # capabilities found by probing records


def _raw_country(rec: Any) -> str | None:
    if not isinstance(rec, dict):
        return None
    c = rec.get("country")
    if isinstance(c, dict):
        c = c.get("iso_code")
    elif c is None:
        c = rec.get("country_code")
    return c.upper() if isinstance(c, str) and len(c) == 2 else None


def _raw_asn(rec: Any) -> tuple[int | None, str | None]:
    if not isinstance(rec, dict):
        return None, None
    src = rec.get("traits") if "traits" in rec else rec
    if not isinstance(src, dict):
        return None, None
    asn = src.get("autonomous_system_number")
    org = src.get("autonomous_system_organization")
    if asn is None and isinstance(rec.get("asn"), int):  # some flat files
        asn = rec["asn"]
    if org is None:
        org = src.get("isp") or src.get("organization") or rec.get("as_name") or rec.get("org")
    return (asn if isinstance(asn, int) and asn > 0 else None), (
        org if isinstance(org, str) else None
    )


def _probe_capabilities(reader: maxminddb.Reader, limit: int = 256) -> int:
    caps = 0
    for i, (_net, rec) in enumerate(reader):
        if _raw_country(rec):
            caps |= _COUNTRY
        if _raw_asn(rec)[0] is not None:
            caps |= _ASN
        if caps == _COUNTRY | _ASN or i >= limit:
            break
    return caps


def _network(n: int, plen: int, v6: bool) -> str:
    """CIDR text of the ``plen`` network holding address ``n`` (cheaper than ip_network)."""
    if v6:
        return f"{ipaddress.IPv6Address(n >> (128 - plen) << (128 - plen))}/{plen}"
    return f"{ipaddress.IPv4Address(n >> (32 - plen) << (32 - plen))}/{plen}"


def _date(epoch: int | None) -> str | None:
    if not epoch:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d")


class _Database:
    """One open MMDB, with its dispatch decided once."""

    __slots__ = ("_model", "caps", "info", "ip_version", "label", "method", "path", "raw")

    def __init__(
        self,
        path: Path | None,
        origin: str,
        *,
        label: str,
        name: str,
        fileobj: io.BytesIO | None = None,
        build_date: str | None = None,
        display_path: str | None = None,
    ):
        import maxminddb
        from maxminddb.errors import InvalidDatabaseError

        self.path = path
        self._model: geoip2.database.Reader | None = None
        try:
            if fileobj is not None:  # read into memory once: geoip2's reader holds it
                import geoip2.database

                self._model = geoip2.database.Reader(fileobj, mode=maxminddb.MODE_FD)
                self.raw = self._model._db_reader
            else:  # what geoip2.database.Reader opens; geoip2 loads if its models are asked for
                self.raw = maxminddb.open_database(str(path), maxminddb.MODE_AUTO)
        except FileNotFoundError:
            raise GeoError(f"{path}: GeoIP database not found") from None
        except (OSError, ValueError, InvalidDatabaseError) as exc:
            raise GeoError(f"{path}: not a readable MaxMind DB file: {exc}") from None
        md = self.raw.metadata()
        self.ip_version = md.ip_version
        self.method, self.caps = _dispatch(md.database_type)
        if self.method == "raw":
            self.caps = _probe_capabilities(self.raw)
        self.label = label
        self.info = GeoSource(
            name=name,
            path=display_path or str(path),
            database_type=md.database_type,
            capability=_CAPABILITY_NAME.get(self.caps, "none"),
            build_date=build_date or _date(md.build_epoch),
            origin=origin,
        )

    @property
    def reader(self) -> geoip2.database.Reader:
        """geoip2's reader of this file, opened when first asked for."""
        if self._model is None:
            import geoip2.database
            import maxminddb

            self._model = geoip2.database.Reader(str(self.path), mode=maxminddb.MODE_AUTO)
        return self._model

    # -- model path: geoip2's own objects (slower: builds a model per lookup)
    def model_get(self, ip: str, n: int = 0, v6: bool = False):
        """(country, asn, org, network) via the geoip2 method this database type calls for."""
        from geoip2.errors import AddressNotFoundError

        m = self.method
        if m == "raw":
            return self.raw_get(ip, n, v6)
        r = self.reader
        try:
            if m in ("country", "city", "enterprise"):
                model = getattr(r, m)(ip)
                cc = model.country.iso_code
                asn = org = None
                if m == "enterprise":
                    asn = model.traits.autonomous_system_number
                    org = model.traits.autonomous_system_organization
                return cc, asn, org, str(model.traits.network)
            model = getattr(r, m)(ip)  # asn / isp
            org = model.autonomous_system_organization
            if org is None and m == "isp":
                org = model.isp or model.organization
            return None, model.autonomous_system_number, org, str(model.network)
        except AddressNotFoundError:
            return None, None, None, None

    # -- raw path: the dict straight from the C extension (same answers, several times faster)
    def raw_get(self, ip: str, n: int = 0, v6: bool = False):
        """Same answers as :meth:`model_get`; ``n`` is the address as an int (for network)."""
        rec, plen = self.raw.get_with_prefix_len(ip)
        if rec is None:
            return None, None, None, None
        asn, org = _raw_asn(rec) if self.caps & _ASN else (None, None)
        cc = _raw_country(rec) if self.caps & _COUNTRY else None
        return cc, asn, org, (_network(n, plen, v6) if cc is not None else None)

    def close(self) -> None:
        self.raw.close()
        if self._model is not None and self._model._db_reader is not self.raw:
            self._model.close()


# --------------------------------------------------------------------------- embedded data


def _private_tmp() -> Path:
    """A per-user directory in the system temp dir, refused if someone else controls it."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    d = Path(tempfile.gettempdir()) / f"apiwatch-{uid}"
    d.mkdir(mode=0o700, exist_ok=True)
    st = d.lstat()
    if not stat.S_ISDIR(st.st_mode) or (hasattr(os, "getuid") and st.st_uid != uid):
        raise PermissionError(f"{d} is not a directory owned by uid {uid}")
    if st.st_mode & 0o022:
        raise PermissionError(f"{d} is writable by others")
    return d


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _decompress_to(xz: Path, target: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, lzma.open(xz) as src:
            while chunk := src.read(1 << 20):
                out.write(chunk)
        os.chmod(tmp, 0o644)  # public data; the directory decides who may read it
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _materialise(xz: Path, stem: str, sha256: str | None = None) -> Path | io.BytesIO:
    """The decompressed MMDB for ``xz``: a cached file, or (no writable dir) an in-memory copy.
    ``sha256``: the xz's digest as the manifest records it (else it is computed: ~5 ms)."""
    digest = (sha256 or _sha256(xz))[:16]
    bases: list[Any] = [cache_dir, _private_tmp]
    for base in bases:
        try:
            d = base() / "geodata"
            d.mkdir(parents=True, exist_ok=True)
            target = d / f"{stem}-{digest}.mmdb"
            if not target.is_file():
                _decompress_to(xz, target)
                for old in d.glob(f"{stem}-*.mmdb"):  # earlier data versions
                    if old != target:
                        old.unlink(missing_ok=True)
            return target
        except OSError as exc:
            _log().debug("geodata cache %s unusable: %s", base, exc)
    _log().warning("no writable cache directory; decompressing %s into memory", xz.name)
    with lzma.open(xz) as src:
        return io.BytesIO(src.read())


def _manifest(directory: Path | None = None) -> dict[str, Any]:
    try:
        d = directory or geodata_dir()
        return json.loads((d / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, FileNotFoundError) as exc:
        _log().warning("embedded geodata manifest unreadable: %s", exc)
        return {}


def embedded_attribution() -> str:
    """The attribution line the embedded data's licences require (for reports and --version)."""
    return _manifest().get("attribution", "")


@dataclass(slots=True)
class _Embedded:
    """An embedded database, opened on first use."""

    xz: Path
    stem: str
    name: str
    entry: dict[str, Any]
    db: _Database | None = None
    failed: bool = False

    @property
    def info(self) -> GeoSource:
        cap = self.entry.get("capability", "")
        return GeoSource(
            name=self.name,
            path=str(self.xz),
            database_type=self.entry.get("database_type", ""),
            capability=cap if cap in ("country", "asn", "country+asn") else "country+asn",
            build_date=self.entry.get("data_date"),
            origin="embedded",
        )

    def _recorded_sha256(self) -> str | None:
        """The manifest's digest of the xz, if the file is still the size it records."""
        try:
            same = self.xz.stat().st_size == self.entry.get("xz_size")
        except OSError:
            return None
        return self.entry.get("xz_sha256") if same else None

    def open(self) -> _Database | None:
        if self.db is None and not self.failed:
            for attempt in (1, 2):
                target = _materialise(self.xz, self.stem, self._recorded_sha256())
                try:
                    self.db = _Database(
                        None if isinstance(target, io.BytesIO) else target,
                        "embedded",
                        label=f"embedded:{self.name}",
                        name=self.name,
                        fileobj=target if isinstance(target, io.BytesIO) else None,
                        build_date=self.entry.get("data_date"),
                        display_path=str(self.xz),
                    )
                    break
                except GeoError as exc:
                    if attempt == 1 and isinstance(target, Path):
                        target.unlink(missing_ok=True)  # damaged cache file: decompress again
                        continue
                    _log().warning("embedded database %s unusable: %s", self.xz, exc)
                    self.failed = True
        return self.db


def _embedded_sources() -> list[_Embedded]:
    try:
        d = geodata_dir()
    except FileNotFoundError:
        return []
    out = []
    for entry in _manifest(d).get("databases", {}).values():
        xz = d / entry["file"]
        if xz.is_file():
            stem = entry["file"].removesuffix(".xz").removesuffix(".mmdb")
            out.append(_Embedded(xz=xz, stem=stem, name=entry.get("name", stem), entry=entry))
    order = {"country": 0, "asn": 1}
    return sorted(out, key=lambda e: order.get(e.entry.get("capability"), 2))


# --------------------------------------------------------------------------- resolver


def _scan_dir(directory: Path) -> list[Path]:
    """``*.mmdb`` in a directory, well-known MaxMind names first."""
    try:
        files = [p for p in directory.iterdir() if p.suffix == ".mmdb" and p.is_file()]
    except OSError:
        return []

    def key(p: Path):
        rank = _NAME_RANK.index(p.stem) if p.stem in _NAME_RANK else len(_NAME_RANK)
        return rank, p.name

    return sorted(files, key=key)


def _split_paths(value: str | None) -> list[Path]:
    if not value:
        return []
    return [Path(p).expanduser() for p in value.split(os.pathsep) if p.strip()]


def _as_paths(value: Any, what: str) -> list[Path]:
    if value is None:
        return []
    if isinstance(value, str | os.PathLike):
        value = [value]
    if not isinstance(value, Iterable):
        raise GeoError(f"config {what!r} must be a list of paths")
    return [Path(v).expanduser() for v in value]


def _dedupe(paths: Iterable[Path]) -> list[Path]:
    seen: set[Path] = set()
    out = []
    for p in paths:
        key = p.resolve() if p.exists() else p
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


_NONE4 = (None, None, None, None)


class GeoResolver:
    """Resolve addresses against overrides, user/system MaxMind DBs and the embedded data.

    Thread-safe for lookups (the readers and the memo are). Use as a context manager or call
    :meth:`close`.
    """

    #: Read records with ``reader._db_reader.get_with_prefix_len`` instead of building geoip2
    #: models: identical answers (the tests check both paths), several times faster.
    _raw_reads = True

    def __init__(
        self,
        databases: Sequence[Path] = (),
        overrides: Sequence[Path] = (),
        *,
        search_dirs: Sequence[Path] | None = None,
        use_embedded: bool = True,
    ):
        self._closed = False
        self._lock = threading.Lock()
        self._dbs: list[_Database] = []
        self._embedded: list[_Embedded] = []
        self._override_files: list[tuple[Path, int]] = []
        self._overrides = _OverrideTable()
        try:
            # overrides: given order, then the bundled file (lowest precedence)
            files = [Path(p).expanduser() for p in overrides]
            bundled = self._bundled_overrides()
            if bundled is not None and all(
                not f.exists() or not bundled.samefile(f) for f in files
            ):
                files.append(bundled)
            for rank, path in enumerate(files):
                rows = load_overrides(path, rank)
                for ov in rows:
                    self._overrides.add(ov)
                self._override_files.append((path, len(rows)))
            # databases: user files, then search dirs
            for path in _dedupe(Path(p).expanduser() for p in databases):
                self._add_db(path, "user", explicit=True)
            dirs = DEFAULT_SEARCH_DIRS if search_dirs is None else tuple(search_dirs)
            for d in dirs:
                origin = "system" if Path(d) in DEFAULT_SEARCH_DIRS else "user"
                for path in _scan_dir(Path(d).expanduser()):
                    self._add_db(path, origin, explicit=False)
            if use_embedded:
                self._embedded = _embedded_sources()
        except BaseException:
            self.close()
            raise
        self._country_chain: list[_Database] | None = None
        self._asn_chain: list[_Database] | None = None
        self._cached = functools.lru_cache(maxsize=CACHE_SIZE)(self._resolve)

    @staticmethod
    def _bundled_overrides() -> Path | None:
        try:
            p = geodata_dir() / "overrides.csv"
        except FileNotFoundError:
            return None
        return p if p.is_file() else None

    def _add_db(self, path: Path, origin: str, *, explicit: bool) -> None:
        if any(Path(db.info.path) == path for db in self._dbs):
            return
        try:
            db = _Database(path, origin, label=f"mmdb:{path}", name=path.stem)
        except GeoError:
            if explicit:
                raise
            _log().warning("skipping unreadable GeoIP database %s", path)
            return
        if not db.caps:
            db.close()
            if explicit:
                raise GeoError(
                    f"{path}: database type {db.info.database_type!r} has no country or ASN data"
                )
            _log().info("skipping %s (%s): no country or ASN data", path, db.info.database_type)
            return
        self._dbs.append(db)

    # ---- construction from the environment

    @classmethod
    def from_env(
        cls,
        databases: Sequence[Path] = (),
        overrides: Sequence[Path] = (),
        config: Mapping | None = None,
    ) -> GeoResolver:
        """Merge explicit arguments > environment > ``config`` > system dirs > embedded.

        Environment: ``APIWATCH_GEOIP`` (files, ``os.pathsep``-separated),
        ``APIWATCH_GEOIP_DIR`` (directories scanned for ``*.mmdb``), ``APIWATCH_GEO_OVERRIDES``
        (files). Config keys: ``databases``, ``overrides`` (lists of paths), ``search_system``
        (bool, default true). A variable or directory that is named but missing is an error.
        """
        config = config or {}
        env = os.environ
        dbs: list[Path] = [Path(p).expanduser() for p in databases]
        dbs += _split_paths(env.get("APIWATCH_GEOIP"))
        for d in _split_paths(env.get("APIWATCH_GEOIP_DIR")):
            if not d.is_dir():
                raise GeoError(f"{d}: APIWATCH_GEOIP_DIR is not a directory")
            dbs += [p for p in _scan_dir(d) if cls._has_geo_data(p)]
        dbs += _as_paths(config.get("databases"), "databases")
        ovs: list[Path] = [Path(p).expanduser() for p in overrides]
        ovs += _split_paths(env.get("APIWATCH_GEO_OVERRIDES"))
        ovs += _as_paths(config.get("overrides"), "overrides")
        search = config.get("search_system", True)
        return cls(
            _dedupe(dbs),
            _dedupe(ovs),
            search_dirs=None if search else (),
        )

    @staticmethod
    def _has_geo_data(path: Path) -> bool:
        import maxminddb
        from maxminddb.errors import InvalidDatabaseError

        try:
            with maxminddb.open_database(str(path)) as r:
                method, caps = _dispatch(r.metadata().database_type)
                return bool(caps or _probe_capabilities(r))
        except (OSError, ValueError, InvalidDatabaseError):
            return True  # let the real open report the error with the file name

    # ---- lookups

    def _chains(self) -> tuple[list[_Database], list[_Database]]:
        if self._country_chain is not None:
            return self._country_chain, self._asn_chain  # type: ignore[return-value]
        with self._lock:  # first public lookup opens the embedded files, once
            if self._country_chain is not None:
                return self._country_chain, self._asn_chain  # type: ignore[return-value]
            dbs = list(self._dbs)
            for e in self._embedded:
                db = e.open()
                if db is not None:
                    dbs.append(db)
            self._asn_chain = [d for d in dbs if d.caps & _ASN]
            self._country_chain = [d for d in dbs if d.caps & _COUNTRY]
            return self._country_chain, self._asn_chain

    def lookup(self, ip: str) -> GeoAnswer:
        """Scope, country and ASN of one address. Memoised; never raises for bad input."""
        if self._closed:
            raise GeoError("GeoResolver is closed")
        if not isinstance(ip, str):
            ip = "" if ip is None else str(ip)
        return self._cached(ip)

    def _resolve(self, text: str) -> GeoAnswer:
        try:
            addr = ipaddress.ip_address(text.strip())
        except ValueError:
            return GeoAnswer(text, "invalid", None, None, None, None, None, None, None)
        canonical = str(addr)
        look = _lookup_address(addr)
        scope = classify(look)

        country = asn = org = site = None
        country_src = asn_src = network = None
        if self._overrides.count:
            # Per field, the most specific override that sets it; asn and org go together.
            country_ov = asn_ov = None
            for ov in self._overrides.match(look):  # most specific first
                if country is None and ov.country is not None:
                    country, country_ov = ov.country, ov
                if site is None and ov.site is not None:
                    site = ov.site
                if asn_ov is None and (ov.asn is not None or ov.org is not None):
                    asn, org, asn_ov = ov.asn, ov.org, ov
            if country_ov is not None:
                country_src = f"override:{country_ov.where}"
                network = str(country_ov.network)
            if asn is not None:
                asn_src = f"override:{asn_ov.where}"  # type: ignore[union-attr]

        if scope == "public":
            need_country = country is None
            need_asn = asn is None
            if need_country or need_asn:
                look_s = canonical if look is addr else str(look)
                country_chain, asn_chain = self._chains()
                v6 = look.version == 6
                n = int(look)
                get = "raw_get" if self._raw_reads else "model_get"
                seen: dict[int, tuple] = {}  # a country+asn file is read once
                if need_country:
                    for db in country_chain:
                        if v6 and db.ip_version == 4:
                            continue
                        seen[id(db)] = res = self._get(db, get, look_s, n, v6)
                        if res[0] is not None:
                            country, country_src, network = res[0], db.label, res[3]
                            break
                if need_asn:
                    for db in asn_chain:
                        if v6 and db.ip_version == 4:
                            continue
                        res = seen.get(id(db)) or self._get(db, get, look_s, n, v6)
                        if res[1] is not None:
                            asn, asn_src = res[1], db.label
                            if org is None:  # an override's org without asn is kept
                                org = res[2]
                            break
        return GeoAnswer(canonical, scope, country, asn, org, site, country_src, asn_src, network)

    @staticmethod
    def _get(db: _Database, method: str, ip: str, n: int, v6: bool):
        try:
            return getattr(db, method)(ip, n, v6)
        except ValueError:  # e.g. an IPv6 address in an IPv4-only file
            return _NONE4
        except Exception as exc:
            from maxminddb.errors import InvalidDatabaseError  # loaded: a database is open

            if isinstance(exc, InvalidDatabaseError):
                raise GeoError(f"{db.info.path}: corrupt MaxMind DB: {exc}") from None
            raise

    def cache_info(self):
        return self._cached.cache_info()

    # ---- reporting

    def sources(self) -> list[GeoSource]:
        """Every source in precedence order: overrides, user, system, embedded."""
        out = []
        for path, rows in self._override_files:
            try:
                mtime = _date(int(path.stat().st_mtime))
            except OSError:
                mtime = None
            out.append(
                GeoSource(
                    name=path.name,
                    path=str(path),
                    database_type=f"apiwatch-overrides ({rows} rows)",
                    capability="country+asn",
                    build_date=mtime,
                    origin="override",
                )
            )
        out += [db.info for db in self._dbs]
        out += [(e.db.info if e.db is not None else e.info) for e in self._embedded]
        return out

    def close(self) -> None:
        self._closed = True
        for db in getattr(self, "_dbs", []):
            db.close()
        for e in getattr(self, "_embedded", []):
            if e.db is not None:
                e.db.close()
                e.db = None
        if hasattr(self, "_cached"):
            self._cached.cache_clear()
        self._country_chain = self._asn_chain = None

    def __enter__(self) -> GeoResolver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
