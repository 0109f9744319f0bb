"""The text form of ``recostream evaluate`` reports (``--json`` prints them whole).

Protocols that compare sources get a table, one row per source; every other
report prints one dotted key per line. The reports are the JSON-ready dicts the
protocols return, already rounded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

BIAS_COLUMNS = ("coverage", "exposure_gini", "novelty", "popularity_lift")


def flatten(value: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested report keys as dotted paths.

    >>> flatten({"a": 1, "b": {"c": 2}})
    [('a', 1), ('b.c', 2)]
    """
    rows: list[tuple[str, Any]] = []
    for key, item in value.items():
        if isinstance(item, dict):
            rows.extend(flatten(item, f"{prefix}{key}."))
        else:
            rows.append((f"{prefix}{key}", item))
    return rows


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [header] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                      for i, (c, w) in enumerate(zip(row, widths, strict=True)))
            for row in cells]


def _scalars(report: dict[str, Any], skip: tuple[str, ...]) -> list[str]:
    return [f"{key:30} {value}" for key, value in flatten(report)
            if key.split(".")[0] not in skip]


def next_basket_text(report: dict[str, Any]) -> list[str]:
    """A row per source: HR/nDCG/recall overall, on repeat and on new items, and bias."""
    header = ["source"] + [f"{part} {m}" for part in ("all", "repeat", "new")
                           for m in ("HR", "nDCG", "R")] + list(BIAS_COLUMNS)
    rows = []
    for name, parts in report["sources"].items():
        row: list[Any] = [name]
        for part in ("all", "repeat", "new"):
            row += [parts[part][m] for m in ("hr_at_k", "ndcg_at_k", "recall_at_k")]
        rows.append(row + [parts["bias"][c] for c in BIAS_COLUMNS])
    return [*_scalars(report, ("sources",)), "", *_table(header, rows)]


def prequential_text(report: dict[str, Any]) -> list[str]:
    """A row per track and source: tested events, HR, MRR and bias."""
    header = ["track", "source", "events", "HR", "MRR", *BIAS_COLUMNS]
    rows = []
    for track in ("new_items", "repeats"):
        for name, m in report.get(track, {}).items():
            rows.append([track, name, m["events"], m["hr_at_k"], m["mrr_at_k"],
                         *(m["bias"][c] for c in BIAS_COLUMNS)])
    return [*_scalars(report, ("new_items", "repeats")), "", *_table(header, rows)]


def default_text(report: dict[str, Any]) -> list[str]:
    return [f"{key:44} {value}" for key, value in flatten(report)]


#: The text form of each protocol's report; any other uses :func:`default_text`.
TEXT_FORMATS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "next-basket": next_basket_text,
    "prequential": prequential_text,
}


def render(report: dict[str, Any]) -> str:
    return "\n".join(TEXT_FORMATS.get(str(report.get("protocol")), default_text)(report))
