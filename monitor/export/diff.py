"""``export --diff OLD``: what changed since a previous export, for change tickets.

Compares policy lines, not bytes: comments (header, dates, notes) and lines that change on
every run (an RPZ serial) are not changes. JSON exports are compared entry by entry. Each
changed line carries the provider comment it sits under. The old file's header records its
selection (``apiwatch-selection:``), so ``apiwatch export --diff OLD`` re-runs it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from monitor.export.model import ExportError, Format, Selection

SELECTION_MARK = "apiwatch-selection: "


@dataclass
class Diff:
    added: list[tuple[str, str]] = field(default_factory=list)  # (line, provider comment)
    removed: list[tuple[str, str]] = field(default_factory=list)
    unchanged: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)

    def lines(self) -> list[str]:
        out = [f"-{line}" + (f"    # {ctx}" if ctx else "") for line, ctx in self.removed]
        out += [f"+{line}" + (f"    # {ctx}" if ctx else "") for line, ctx in self.added]
        out.append(
            f"{len(self.added)} added, {len(self.removed)} removed, {self.unchanged} unchanged"
        )
        return out


def selection_of(text: str, where: str) -> Selection:
    """The selection an export was made with, from its header (or JSON ``selection``)."""
    if text.lstrip().startswith("{"):
        try:
            return Selection.from_dict(json.loads(text)["selection"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ExportError(f"{where}: not an apiwatch JSON export ({exc})") from None
    for line in text.splitlines()[:64]:
        at = line.find(SELECTION_MARK)
        if at >= 0:
            try:
                return Selection.from_dict(json.loads(line[at + len(SELECTION_MARK) :]))
            except ValueError as exc:
                raise ExportError(f"{where}: bad {SELECTION_MARK.strip()} line: {exc}") from None
    raise ExportError(f"{where}: not an apiwatch export (no '{SELECTION_MARK.strip()}' line)")


def policy_lines(fmt: Format, text: str, where: str) -> list[tuple[str, str]]:
    """(line, the comment it sits under) for every line that is policy, in file order."""
    if fmt.comment is None:
        try:
            entries = json.loads(text)["entries"]
            return [
                (
                    f"{e['host']}\t{e['provider']}\t{e['kind']}\t{','.join(e['rules'])}",
                    e.get("provider_name") or "",
                )
                for e in entries
            ]
        except (ValueError, KeyError, TypeError) as exc:
            raise ExportError(f"{where}: not an apiwatch JSON export ({exc})") from None
    found: list[tuple[str, str]] = []
    context = ""
    in_header = True  # the header ends with the selection line
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith(fmt.comment):
            if not in_header:
                context = line[len(fmt.comment) :].strip()
            in_header = in_header and SELECTION_MARK not in line
            continue
        if not (fmt.volatile and line.startswith(fmt.volatile)):
            found.append((line, context))
    return found


def diff(fmt: Format, old_text: str, new_text: str, old_name: str) -> Diff:
    old = policy_lines(fmt, old_text, old_name)
    new = policy_lines(fmt, new_text, "the new export")
    old_set = {line for line, _ in old}
    new_set = {line for line, _ in new}
    return Diff(
        added=[(line, ctx) for line, ctx in new if line not in old_set],
        removed=[(line, ctx) for line, ctx in old if line not in new_set],
        unchanged=len(old_set & new_set),
    )
