"""Terminal tables (issue 15: ``incidents`` printed 100 k rows through tabulate in 8.8 s of
CPU): the table apiwatch draws itself is tabulate's ``simple`` table of the same cells,
character for character, whatever the cells hold."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st
from tabulate import tabulate

from monitor.output import MAX_CELL, _simple_table, safe_text, write_table

#: cells as a listing gets them: texts tabulate might take for numbers or booleans, padded,
#: empty, long, with controls, wide or combining characters, and non-text values
SAMPLES = ("", " ", "-", "True", "False", "1.0", "-3", "1e5", "nan", "0x1f", "12", " x ", "a b",
           "2026-11-01T00:00:00Z", "x" * (MAX_CELL + 5), "中文", "e\u0301", "\x1b[2J",
           "a\u202eb", "\t", "\n")  # fmt: skip
CELLS = st.one_of(
    st.sampled_from(SAMPLES),
    st.text(max_size=12),
    st.integers(),
    st.floats(allow_nan=False),
    st.none(),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(["id", "severity", "x", "a_long_header", "n"]), min_size=1,
             max_size=6, unique=True).flatmap(
        lambda heads: st.tuples(
            st.just(heads),
            st.lists(st.fixed_dictionaries({h: CELLS for h in heads}), min_size=1, max_size=8),
        )
    )
)  # fmt: skip
def test_a_table_is_what_tabulate_makes_of_its_cells(table):
    heads, rows = table
    out = io.StringIO()
    assert write_table(rows, heads, out) == len(rows)
    cells = [[safe_text(r[h]) for h in heads] for r in rows]
    expected = tabulate(cells, headers=heads, tablefmt="simple", disable_numparse=True)
    assert out.getvalue() == expected + "\n"


def test_a_listing_of_many_rows_is_tabulates():
    """Listings are ASCII but for the "…" of cut cells (long URLs here): drawn by apiwatch,
    the same as tabulate's."""
    rows = [{"id": f"I-{i:06x}", "count": i * 7, "site": None if i % 3 else " shanghai",
             "url": "https://api.openai.com/v1/" + "x" * (i % 90)} for i in range(3000)]  # fmt: skip
    out = io.StringIO()
    write_table(rows, ["id", "count", "site", "url"], out)
    cells = [[safe_text(r[c]) for c in ("id", "count", "site", "url")] for r in rows]
    assert any(c[3].endswith("…") for c in cells), "some URLs are cut"
    assert _simple_table(cells, ["id", "count", "site", "url"]) is not None, "drawn here"
    expected = tabulate(cells, headers=["id", "count", "site", "url"], tablefmt="simple",
                        disable_numparse=True)  # fmt: skip
    assert out.getvalue() == expected + "\n"
