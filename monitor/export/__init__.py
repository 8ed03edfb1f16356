"""From findings to controls: the catalogue hosts a site's policy would flag, written as
proxy ACLs, IDS rules, Sigma rules, DNS policy, Zeek intel or plain lists.

Usable on its own::

    export = select(app, Selection("squid", site="shanghai"))
    text = FORMATS["squid"].render(export)
"""

from monitor.export.diff import Diff, diff
from monitor.export.formats import FORMATS
from monitor.export.model import Entry, Export, ExportError, Format, Selection
from monitor.export.select import DEFAULT_SEVERITY, select

__all__ = [
    "DEFAULT_SEVERITY",
    "FORMATS",
    "Diff",
    "Entry",
    "Export",
    "ExportError",
    "Format",
    "Selection",
    "diff",
    "select",
]
