"""The HTML report: one self-contained file (inline CSS, SVG charts, a small sort script).

Everything that came from a log (hosts, URLs, users, file names, notes) is data:

* Jinja2 autoescaping escapes it for HTML text and attributes (a maintained escaper is
  safer than hand-written string handling, and it is on by default for the whole template);
* control and bidirectional-override characters (U+202A–U+202E, U+2066–U+2069,
  U+200E/U+200F) are shown as visible ``\\u202e`` escapes, so a crafted name cannot reorder
  what the reader sees;
* long values are cut, with the whole (escaped) value in a ``title`` attribute;
* a Content-Security-Policy allows no network fetch at all and only the report's own script
  (by its hash), so even a missed escape could not run injected code.

Charts are SVG drawn here in Python; nothing is downloaded when the file is opened.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup, escape

from monitor.output import safe_text
from monitor.report.data import OTHER, Report

TEMPLATES = Path(__file__).resolve().parent / "templates"
CELL_LIMIT = 72

PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#e15759",
    "#76b7b2",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
)
OTHER_COLOUR = "#bab0ac"
SEVERITY_COLOURS = {
    "critical": "#7f0000",
    "high": "#d62728",
    "medium": "#ff7f0e",
    "low": "#e0c000",
    "info": "#1f77b4",
}
STATUS_COLOURS = {"new": "#d62728", "open": "#ff7f0e", "resolved": "#2ca02c"}

SORT_SCRIPT = """
(function () {
  function key(cell) {
    var v = cell.getAttribute("data-v");
    if (v !== null && v !== "" && !isNaN(v)) return [0, parseFloat(v)];
    return [1, (v !== null ? v : cell.textContent).trim().toLowerCase()];
  }
  function sortBy(th) {
    var table = th.closest("table"), body = table.tBodies[0];
    var col = Array.prototype.indexOf.call(th.parentNode.children, th);
    var asc = th.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(th.parentNode.children, function (h) {
      h.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[col]), y = key(b.cells[col]);
      var r = x[0] - y[0] || (x[1] < y[1] ? -1 : x[1] > y[1] ? 1 : 0);
      return asc ? r : -r;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  document.querySelectorAll("table.sortable th").forEach(function (th) {
    th.tabIndex = 0;
    th.addEventListener("click", function () { sortBy(th); });
    th.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(th); }
    });
  });
})();
""".strip()


def script_hash(script: str = SORT_SCRIPT) -> str:
    return base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()


# --------------------------------------------------------------------------- filters


def text(value: Any, limit: int = CELL_LIMIT) -> Markup:
    """Log data as safe HTML: escaped, bidi/controls visible, long values cut with a title."""
    if value is None or value == "":
        return Markup('<span class="na">–</span>')
    full = safe_text(value, None)
    if len(full) <= limit:
        return escape(full)
    return Markup('<span class="cut" title="{}">{}…</span>').format(full, full[: limit - 1])


def num(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return f"{value:,}"


def human_bytes(value: Any) -> Markup:
    if value is None:
        return Markup('<span class="na" title="not in the logs">–</span>')
    n = float(value)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            shown = f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
            return Markup('<span title="{} bytes">{}</span>').format(f"{value:,}", shown)
        n /= 1000
    raise AssertionError  # unreachable


def delta(value: Any, pct: Any = None, good_when: str = "down") -> Markup:
    """A signed change with an arrow; ``good_when`` colours it (more incidents is bad)."""
    if value is None:
        return Markup('<span class="na">–</span>')
    if value == 0:
        return Markup('<span class="flat">±0</span>')
    up = value > 0
    cls = "bad" if (up and good_when == "down") or (not up and good_when == "up") else "good"
    cls = cls if good_when != "none" else "flat"
    arrow = "▲" if up else "▼"
    shown = f"{arrow} {value:+,}"
    if pct is not None:
        shown += f" ({pct:+.1f} %)"
    return Markup('<span class="{}">{}</span>').format(cls, shown)


def joined(values: Sequence[Any] | None, limit: int = 3) -> Markup:
    values = list(values or [])
    if not values:
        return text(None)
    parts = [text(v, 40) for v in values[:limit]]
    out = Markup(", ").join(parts)
    if len(values) > limit:
        rest = ", ".join(safe_text(v, None) for v in values[limit:])
        out += Markup(' <span class="more" title="{}">+{}</span>').format(rest, len(values) - limit)
    return out


# --------------------------------------------------------------------------- charts


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exp:
            return step * exp
    return 10 * exp


def _short(label: Any, limit: int = 22) -> str:
    shown = safe_text(label if label is not None else "(unknown)", None)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def stacked_bars(
    buckets: Sequence[str], series: Sequence[dict[str, Any]], title: str
) -> tuple[Markup, list[tuple[str, str, int]]]:
    """Requests per time bucket, one stacked colour per provider. Returns (svg, legend)."""
    width, height, left, bottom, top = 760, 240, 56, 42, 12
    n = max(1, len(buckets))
    totals = [sum(s["values"][i] for s in series) for i in range(len(buckets))]
    ymax = _nice_max(max(totals, default=0))
    plot_w, plot_h = width - left - 10, height - top - bottom
    slot = plot_w / n
    bar_w = max(1.0, slot * 0.8)
    parts = [
        Markup(
            '<svg class="chart" role="img" viewBox="0 0 {w} {h}" width="100%" '
            'preserveAspectRatio="xMidYMid meet" aria-label="{t}"><title>{t}</title>'
        ).format(w=width, h=height, t=title)
    ]
    for i in range(5):
        y = top + plot_h - plot_h * i / 4
        parts.append(
            Markup(
                '<line class="grid" x1="{x1}" x2="{x2}" y1="{y:.1f}" y2="{y:.1f}"/>'
                '<text class="axis" x="{tx}" y="{ty:.1f}" text-anchor="end">{v}</text>'
            ).format(x1=left, x2=width - 10, y=y, tx=left - 6, ty=y + 4, v=num(int(ymax * i / 4)))
        )
    legend = []
    colours = {}
    for k, s in enumerate(series):
        colour = OTHER_COLOUR if s["provider"] == OTHER else PALETTE[k % len(PALETTE)]
        colours[s["provider"]] = colour
        legend.append((s["provider"], colour, s["total"]))
    for i, label in enumerate(buckets):
        x = left + slot * i + (slot - bar_w) / 2
        y = top + plot_h
        for s in series:
            v = s["values"][i]
            if not v:
                continue
            h = plot_h * v / ymax
            y -= h
            parts.append(
                Markup(
                    '<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" '
                    'fill="{c}"><title>{p} · {b}: {v}</title></rect>'
                ).format(
                    x=x,
                    y=y,
                    w=bar_w,
                    h=max(h, 0.5),
                    c=colours[s["provider"]],
                    p=_short(s["provider"], 60),
                    b=label,
                    v=num(v),
                )  # fmt: skip
            )
    step = max(1, math.ceil(n / 12))
    for i in range(0, len(buckets), step):
        shown = buckets[i][11:16] if "T" in buckets[i] else buckets[i][5:]
        parts.append(
            Markup('<text class="axis" x="{x:.1f}" y="{y}" text-anchor="middle">{t}</text>').format(
                x=left + slot * i + slot / 2, y=height - bottom + 16, t=shown
            )
        )
    parts.append(
        Markup('<line class="base" x1="{a}" x2="{b}" y1="{y}" y2="{y}"/>').format(
            a=left, b=width - 10, y=top + plot_h
        )
    )
    parts.append(Markup("</svg>"))
    return Markup("").join(parts), legend


def hbars(
    rows: Sequence[tuple[Any, Sequence[tuple[str, int, str]]]], title: str, label_width: int = 150
) -> Markup:
    """Horizontal bars: rows of (label, [(metric, value, colour), …]) grouped per label."""
    width = 760
    per = max((len(m) for _, m in rows), default=1)
    bar_h, gap = 11, 8
    row_h = per * bar_h + gap
    height = max(40, len(rows) * row_h + 20)
    vmax = _nice_max(max((v for _, m in rows for _, v, _ in m), default=0))
    plot_w = width - label_width - 80
    parts = [
        Markup(
            '<svg class="chart h" role="img" viewBox="0 0 {w} {h}" width="100%" '
            'preserveAspectRatio="xMidYMid meet" aria-label="{t}"><title>{t}</title>'
        ).format(w=width, h=height, t=title)
    ]
    for r, (label, metrics) in enumerate(rows):
        y0 = 10 + r * row_h
        parts.append(
            Markup('<text class="label" x="{x}" y="{y:.1f}" text-anchor="end">{t}</text>').format(
                x=label_width - 8, y=y0 + per * bar_h / 2 + 4, t=_short(label)
            )
        )
        for k, (metric, value, colour) in enumerate(metrics):
            if not value:  # no bar, no label: zeros would stack up as "0 0 0"
                continue
            w = plot_w * value / vmax
            y = y0 + k * bar_h
            parts.append(
                Markup(
                    '<rect class="bar" x="{x}" y="{y}" width="{w:.1f}" height="{h}" fill="{c}">'
                    "<title>{l} · {m}: {v}</title></rect>"
                    '<text class="value" x="{tx:.1f}" y="{ty}">{v}</text>'
                ).format(
                    x=label_width,
                    y=y,
                    w=max(w, 0.5),
                    h=bar_h - 2,
                    c=colour,
                    l=_short(label, 60),
                    m=metric,
                    v=num(value),
                    tx=label_width + w + 4,
                    ty=y + bar_h - 4,
                )  # fmt: skip
            )
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)


# --------------------------------------------------------------------------- render


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,  # every {{ }} is escaped unless a filter above returned Markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(t=text, num=num, bytes=human_bytes, delta=delta, joined=joined)
    return env


_ENV: jinja2.Environment | None = None


def _env() -> jinja2.Environment:
    global _ENV
    if _ENV is None:
        _ENV = _environment()
    return _ENV


def render_section(template: str, report: Report, inline: bool = False, **variables: Any) -> Markup:
    """One section's template (a file under templates/, or ``inline`` Jinja source), which
    sees the report as ``r`` and its meta as ``m``."""
    env = _env()
    found = env.from_string(template) if inline else env.get_template(template)
    return Markup(found.render(r=report, m=report.meta, **variables))


def render_html(report: Report) -> str:
    return (
        _env()
        .get_template("report.html.j2")
        .render(
            r=report,
            sections=[section.html(report) for section in report.sections],
            script=Markup(SORT_SCRIPT),  # a constant of this module, never data
            script_hash=script_hash(),
            severity_colours=SEVERITY_COLOURS,
        )
    )
