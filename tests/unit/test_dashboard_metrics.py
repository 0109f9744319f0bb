"""The Grafana dashboard queries only series that a worker's ``GET /metrics`` exports.

The exported names come from the exposition code itself (WorkerMetrics over a
Counters with every field set), so renaming a series on either side fails here.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.runtime.metrics import Counters, WorkerMetrics

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "ops" / "grafana" / "dashboards" / "recostream.json"

# Words PromQL gives meaning to that are not metric names.
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
# Followed by a parenthesised list of label names, not of expressions.
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_TOKEN = re.compile(r"""
    (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<matchers>\{(?:"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|[^}"'])*\})
  | (?P<range>\[[^\]]*\])
  | (?P<variable>\$\{[^}]*\}|\$\w+)
  | (?P<number>\d[\w.]*)
  | (?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<open>\()
  | (?P<close>\))
  | (?P<other>\S)
""", re.VERBOSE)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (Grafana variables allowed).

    >>> sorted(metric_names('sum by (le) (rate(a_bucket{x="}"}[$__rate_interval]))'
    ...                     ' / on (job) group_left (le) b_total offset 5m > bool 0.5'))
    ['a_bucket', 'b_total']
    """
    names: set[str] = set()
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr)]
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else (None, "")
        if kind == "name" and text in _LABEL_LISTS:
            if following[0] == "open":  # skip the label list up to its ")"
                while tokens[i][0] != "close":
                    i += 1
        elif (kind == "name" and following[0] != "open" and following[1] not in _LABEL_LISTS
              and text.lower() not in _KEYWORDS):  # not a function, nor `sum by (...)`
            names.add(text)
        i += 1
    return names


def variable_names(query: str) -> set[str]:
    """Metric names in a Prometheus template variable query.

    >>> sorted(variable_names("label_values(up_total{job='x'}, instance)"))
    ['up_total']
    >>> sorted(variable_names("label_values(instance)"))
    []
    """
    label_values = re.fullmatch(r"\s*label_values\((.*)\)\s*", query)
    if label_values is None:
        return metric_names(query)
    selector, _, _label = label_values.group(1).rpartition(",")
    return metric_names(selector)


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_queries() -> dict[str, set[str]]:
    """Every PromQL query of the dashboard (panels and variables) -> its metric names."""
    board = dashboard()
    queries: dict[str, set[str]] = {}
    for panel in _panels(board["panels"]):
        for target in panel.get("targets", []):
            queries[target["expr"]] = metric_names(target["expr"])
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query if isinstance(query, str) else query["query"]
            queries[text] = variable_names(text)
    return queries


def populated_counters() -> Counters:
    """A Counters with every field non-zero and every labelled field holding a label,
    so that every family of the exposition has a sample (a new field is covered too)."""
    counters = Counters()
    for field in dataclasses.fields(counters):
        value = getattr(counters, field.name)
        if isinstance(value, Counter):
            value["some_label"] = 1
        elif isinstance(value, (int, float)):
            setattr(counters, field.name, type(value)(1))
        else:
            raise AssertionError(f"Counters.{field.name}: no sample value for {type(value)}")
    return counters


def exported() -> dict[str, set[str]]:
    """Family name -> the sample names a scrape of the worker ingests."""
    metrics = WorkerMetrics(populated_counters(), lambda: {("clicks", 0): 1})
    metrics.rank_by(1, {"all": "blend"}, ["blend"])  # the labelled gauge's sample
    families: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        families[family.name] = {sample.name for sample in family.samples}
    return families


def test_every_family_has_a_sample() -> None:
    """Without a sample a labelled family would export no name at all."""
    empty = [name for name, samples in exported().items() if not samples]
    assert not empty, f"families without samples (populate them above): {empty}"


def test_every_dashboard_series_is_exported() -> None:
    samples = set().union(*exported().values())
    queries = dashboard_queries()
    assert len(queries) > 10
    for expr, names in queries.items():
        assert names, f"no metric name found in {expr!r}"
        unknown = names - samples
        assert not unknown, f"{expr!r} queries {sorted(unknown)}, not exported by /metrics"


def test_every_exported_family_is_on_the_dashboard() -> None:
    """A new series gets a panel; the histograms' _created gauges are bookkeeping."""
    queried = set().union(*dashboard_queries().values())
    shown = {name for name, samples in exported().items() if samples & queried}
    missing = {name for name in exported() if not name.endswith("_created")} - shown
    assert not missing, f"exported but not on the dashboard: {sorted(missing)}"


def test_panels_use_the_datasource_variable_and_have_units() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for variable in variables.values():
        if "datasource" in variable:
            assert variable["datasource"]["uid"] == "${datasource}", variable["name"]
    titles = []
    for panel in _panels(board["panels"]):
        titles.append(panel["title"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{panel['title']}: no unit"
    assert all(titles) and len(titles) == len(set(titles)), titles
    assert len({p["id"] for p in _panels(board["panels"])}) == len(titles)


@pytest.mark.parametrize(("expr", "names"), [
    ("recostream_consumer_lag", {"recostream_consumer_lag"}),
    ('histogram_quantile(0.99, sum by (le) (rate(x_bucket{instance=~"$instance"}[5m])))',
     {"x_bucket"}),
    ("sum(a_total) - sum(b_total) - sum(c_total)", {"a_total", "b_total", "c_total"}),
    ("sum without (topic, partition) (rate(y_total[${__range}])) * 60", {"y_total"}),
])
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names
