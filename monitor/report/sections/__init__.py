"""The sections of a report, in the order every format shows them.

Each module here holds one :class:`~monitor.report.section.Section` as ``SECTION``. To add
a section, write its module (its HTML in ``templates/sections/<id>.html.j2``, or inline as
``Section.template``) and add its name to :data:`MODULES`: that one line is the
registration. A dotted name (``myorg.reports.weekdays``) registers a module from elsewhere.
"""

from __future__ import annotations

import importlib

from monitor.report.section import Section

MODULES = (
    "findings",
    "summary",
    "traffic",
    "incidents",
    "audit",
    "clients",
    "processing",
    "relays",
    "methods",
)


def registered() -> tuple[Section, ...]:
    """The ``SECTION`` of each module in :data:`MODULES`, in that order."""
    return tuple(
        importlib.import_module(name if "." in name else f"{__name__}.{name}").SECTION
        for name in MODULES
    )
