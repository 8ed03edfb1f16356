"""The Markdown report, for tickets and e-mail (CommonMark / GitHub tables).

Log data (hosts, URLs, users, file names, client addresses) goes into code spans: nothing in
it is markup there, so ``<script>``, ``[links](…)`` and ``*emphasis*`` stay literal text, and a
bare ``https://…`` is not turned into a link. The only character a table still reads in a
code span is ``|``, which is escaped. Other text (rule ids, notes) has the Markdown
punctuation escaped with backslashes. Control and bidirectional-override characters are
shown as visible ``\\u202e`` escapes in both, and long values are cut with an ellipsis.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from monitor.output import safe_text
from monitor.report.data import Report

CELL_LIMIT = 60
_SPECIAL = re.compile(r"([\\`*_{}\[\]<>|#!~&])")
_TICKS = re.compile(r"`+")


def md(value: Any, limit: int = CELL_LIMIT) -> str:
    """Plain text with every Markdown-significant character escaped."""
    if value is None or value == "":
        return "–"
    shown = _cut(safe_text(value, None), limit)
    return _SPECIAL.sub(r"\\\1", shown)


def code(value: Any, limit: int = CELL_LIMIT) -> str:
    """Log data as a code span (literal text), safe inside a table cell."""
    if value is None or value == "":
        return "–"
    shown = _cut(safe_text(value, None), limit).replace("|", "\\|")
    fence = "`" * (max((len(m) for m in _TICKS.findall(shown)), default=0) + 1)
    pad = " " if shown.startswith("`") or shown.endswith("`") else ""
    return f"{fence}{pad}{shown}{pad}{fence}"


def codes(values: Sequence[Any] | None, limit: int = 3) -> str:
    values = list(values or [])
    if not values:
        return "–"
    out = ", ".join(code(v, 40) for v in values[:limit])
    return out + (f" +{len(values) - limit}" if len(values) > limit else "")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def num(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:,.1f}" if isinstance(value, float) else f"{value:,}"


def change(value: Any, pct: Any = None) -> str:
    if value is None:
        return "–"
    if value == 0:
        return "±0"
    out = f"{value:+,}"
    return out + (f" ({pct:+.1f} %)" if pct is not None else "")


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int] = frozenset()
) -> str:
    """A GitHub table; cells must already be escaped (md/code/num)."""
    if not rows:
        return "_none_\n"
    head = "| " + " | ".join(headers) + " |"
    rule = "|" + "|".join("---:" if i in right else "---" for i in range(len(headers))) + "|"
    body = ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join([head, rule, *body]) + "\n"


def render_markdown(report: Report) -> str:
    r = report
    m = r.meta
    out: list[str] = []
    add = out.append
    add(f"# apiwatch {m['period']} report: {m['label']}\n")
    add(
        f"LLM API traffic and region-policy incidents, {m['since']} to {m['until']} "
        f"(UTC, end excluded), compared with {m['previous']['label']}.  "
    )
    filters = m["filters"]
    if any(filters.values()):
        add(
            "Filtered: "
            + (f"site {codes(filters['site'], 10)} " if filters["site"] else "")
            + (f"provider {codes(filters['provider'], 10)}" if filters["provider"] else "")
            + "".join(f" {k} {codes(filters[k], 10)}" for k in ("user", "client") if k in filters)
            + "  "
        )
    add(
        f"Generated {m['generated']} by apiwatch {m['apiwatch_version']} from {code(m['database'], 90)}.\n"
    )
    if not m["complete"]:
        add(f"> **This period is not over yet**: the figures cover it up to {m['generated']}.\n")

    for section in r.sections:
        out.extend(section.markdown(r))
    return "\n".join(out)
