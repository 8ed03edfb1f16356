"""``--since``/``--until`` values: relative (``7d``, ``24h``, ``30m``, ``2w``) or ISO 8601."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(text: str, now: datetime | None = None) -> str:
    """Return an ISO 8601 UTC timestamp (``YYYY-MM-DDTHH:MM:SS.mmmZ``) for comparison in SQL.

    >>> parse_when("2026-11-01", datetime(2026, 11, 28, tzinfo=UTC))
    '2026-11-01T00:00:00.000Z'
    >>> parse_when("7d", datetime(2026, 11, 28, tzinfo=UTC))
    '2026-11-21T00:00:00.000Z'
    """
    now = now or datetime.now(UTC)
    m = _RELATIVE.match(text)
    if m:
        when = now - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    else:
        try:
            when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"{text!r} is not a time: use 7d, 24h, 30m, 2w, or an ISO date like 2026-11-01"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
