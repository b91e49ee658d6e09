"""Report kinds: the one registry of what a grid file's ``report = "..."`` may name.

A kind is what a grid's report adds to the generic one (sections, figures, CSV tables: the function
``build`` names) and what the kind needs of the grid's runs: the held-out measurements it reads and,
where its fits compare some fields only, those fields (an axis over another would be pooled into
them). Grid files are checked against this registry and the report is built from it, so a new kind
is one entry here and its function (docs/DESIGN.md, "How to add ... a report kind").

``build`` is a ``"module:function"`` name, imported when a report is built: parsing a grid file
needs no pandas, statsmodels or matplotlib.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

Pairs = tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class ReportKind:
    """One report kind: its name, its builder, what its runs measure and which fields it may compare."""

    name: str
    build: str  # "module:function": (table, histories, manifest) -> degradation.KindOutput
    measurements: Pairs = ()  # settings under the grid file's own: a grid measures no more than its report reads
    fields: tuple[str, ...] = ()  # the config fields its fits compare; empty: any axis

    def builder(self) -> Callable[..., Any]:
        module, function = self.build.split(":")
        return getattr(importlib.import_module(module), function)


# degradation: its curves plot the test error of every epoch (He et al. 2015 Fig. 6), so it keeps the
# default measurements; no figure reads its per-epoch validation, but a val_epochs setting would change
# the run ids its committed references were trained under. It fits error ~ depth x family per length,
# so a grid of it may vary only those. generic: reads the final test error only (its curves plot
# validation), so the test set is measured once, at the end.
KINDS: dict[str, ReportKind] = {kind.name: kind for kind in (
    ReportKind("degradation", "resnet_core.degradation:degradation_kind",
               fields=("model.residual", "model.depth", "train.epochs", "train.iterations")),
    ReportKind("generic", "resnet_core.grid.report:generic_kind", measurements=(("test_eval", "end"),)),
)}


def report_kind(name: Any, where: str = "report") -> ReportKind:
    """The kind named ``name``; an unknown one is a one-line ValueError listing the known kinds."""
    if not isinstance(name, str) or name not in KINDS:
        raise ValueError(f"{where}={name!r} is invalid: expected one of {', '.join(KINDS)}")
    return KINDS[name]
