"""Checks a PromQL expression against the series a scrape showed: every metric it selects
exists, and every label it matches on, groups by (`by`, `on`, `ignoring`,
`group_left`), or reads from the result (a legend's `{{label}}`, an alert's
`$labels.name`) is one the series carry.

The expression is parsed by promql-parser (the Prometheus grammar), and the labels each
part of it yields are followed up the tree as Prometheus computes them: an aggregation
keeps its `by` labels, `histogram_quantile` drops `le`, one-to-one arithmetic on `on(...)`
keeps those, `group_left(...)` adds the named labels of the other side.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import promql_parser as pq

__all__ = [
    "GRAFANA_INTERVALS",
    "TARGET_LABELS",
    "Catalog",
    "Problems",
    "check",
    "labels_used_in_template",
]

# Grafana's interval variables, given a value PromQL accepts before parsing.
GRAFANA_INTERVALS = re.compile(r"\$(__rate_interval|__interval|__range)\b|\$\{__[a-z_]+\}")

# Labels Prometheus adds to every series it scrapes.
TARGET_LABELS = frozenset({"instance", "job"})

# Aggregations whose result keeps the labels of their input.
_KEEPING = {"topk", "bottomk", "limitk", "limit_ratio"}


@dataclass(frozen=True)
class Catalog:
    """Series name (as a query names it: `x_total`, `x_bucket`) to its label names,
    target labels included."""

    series: Mapping[str, frozenset[str]]


@dataclass
class Problems:
    expr: str
    found: list[str] = field(default_factory=list)

    def add(self, problem: str) -> None:
        self.found.append(problem)


Labels = frozenset[str] | None  # None: a scalar or a string, which carries no labels


def check(expr: str, catalog: Catalog, *, reads: Iterable[str] = ()) -> list[str]:
    """What is wrong with `expr` (empty if nothing): unknown metrics, labels the series do
    not carry. `reads` are labels read from its result (legends, annotations)."""
    problems = Problems(expr)
    try:
        parsed = pq.parse(GRAFANA_INTERVALS.sub("5m", expr))
    except ValueError as exc:
        return [f"does not parse: {exc}"]
    result = _labels(parsed, catalog, problems)
    for label in reads:
        if label not in (result or frozenset()):
            problems.add(f"reads label {label!r}, which the result does not carry")
    return problems.found


def labels_used_in_template(text: str) -> set[str]:
    """Labels a Grafana legend (`{{handler}}`) or an alert template (`$labels.handler`)
    reads."""
    legend = re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", text)
    alert = re.findall(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)", text)
    return set(legend) | set(alert)


def _labels(node: pq.Expr, catalog: Catalog, problems: Problems) -> Labels:
    handler = _HANDLERS.get(type(node))
    if handler is None:
        problems.add(f"unhandled node {type(node).__name__}")
        return frozenset()
    return handler(node, catalog, problems)


def _selector(node: pq.Expr, catalog: Catalog, problems: Problems) -> Labels:
    assert isinstance(node, pq.VectorSelector)
    if node.name is None:
        problems.add(f"selector without a metric name: {node}")
        return frozenset()
    labels = catalog.series.get(node.name)
    if labels is None:
        problems.add(f"unknown metric {node.name!r}")
        return frozenset()
    matchers = [*node.matchers.matchers, *(m for ms in node.matchers.or_matchers for m in ms)]
    for matcher in matchers:
        if matcher.name != "__name__" and matcher.name not in labels:
            problems.add(f"{node.name} has no label {matcher.name!r}")
    return labels


def _matrix(node: pq.Expr, catalog: Catalog, problems: Problems) -> Labels:
    assert isinstance(node, pq.MatrixSelector)
    return _selector(node.vector_selector, catalog, problems)


def _literal(node: pq.Expr, catalog: Catalog, problems: Problems) -> Labels:
    return None


def _inner(node: pq.Expr, catalog: Catalog, problems: Problems) -> Labels:
    assert isinstance(node, (pq.ParenExpr, pq.UnaryExpr, pq.SubqueryExpr))
    return _labels(node.expr, catalog, problems)


def _call(node: pq.Expr, catalog: Catalog, problems: Problems) -> Labels:
    assert isinstance(node, pq.Call)
    args = [_labels(arg, catalog, problems) for arg in node.args]
    name = node.func.name
    if name == "histogram_quantile":
        buckets = args[1]
        if buckets is not None and "le" not in buckets:
            problems.add("histogram_quantile over series without an `le` label")
        return None if buckets is None else buckets - {"le"}
    if name in ("label_replace", "label_join"):
        target = node.args[1]
        assert isinstance(target, pq.StringLiteral)
        return (args[0] or frozenset()) | {target.val}
    if name in ("time", "vector", "scalar", "pi"):
        return None if name != "vector" else frozenset()
    return next((labels for labels in args if labels is not None), None)


def _aggregate(node: pq.Expr, catalog: Catalog, problems: Problems) -> Labels:
    assert isinstance(node, pq.AggregateExpr)
    inner = _labels(node.expr, catalog, problems) or frozenset()
    if node.param is not None:
        _labels(node.param, catalog, problems)
    op = str(node.op)
    modifier = node.modifier
    if modifier is not None:
        for label in modifier.labels:
            if label not in inner:
                problems.add(f"{op} by/without {label!r}, which its input does not carry")
        if modifier.type == pq.AggModifierType.By:
            return frozenset(modifier.labels)
        return inner - set(modifier.labels)
    if op in _KEEPING:
        return inner
    if op == "count_values" and isinstance(node.param, pq.StringLiteral):
        return frozenset({node.param.val})
    return frozenset()


def _binary(node: pq.Expr, catalog: Catalog, problems: Problems) -> Labels:
    assert isinstance(node, pq.BinaryExpr)
    lhs = _labels(node.lhs, catalog, problems)
    rhs = _labels(node.rhs, catalog, problems)
    if lhs is None or rhs is None:  # vector and scalar: the vector's labels
        return rhs if lhs is None else lhs
    op = str(node.op)
    modifier = node.modifier
    matching = modifier.matching if modifier is not None else None
    if matching is not None:
        include = matching.type == pq.LabelModifierType.Include
        for label in matching.labels:
            missing = (label not in lhs or label not in rhs) if include else label not in lhs | rhs
            if missing:
                word = "on" if include else "ignoring"
                problems.add(f"{op} {word}({label}): not on both sides")
    if op in ("and", "unless"):
        return lhs
    if op == "or":
        return lhs | rhs
    card = modifier.card if modifier is not None else pq.VectorMatchCardinality.OneToOne
    grouped = frozenset(modifier.group_labels or ()) if modifier is not None else frozenset()
    if card == pq.VectorMatchCardinality.ManyToOne:
        for label in grouped - rhs:
            problems.add(f"group_left({label}): not on the right-hand side")
        return lhs | grouped
    if card == pq.VectorMatchCardinality.OneToMany:
        for label in grouped - lhs:
            problems.add(f"group_right({label}): not on the left-hand side")
        return rhs | grouped
    if matching is None:
        return lhs
    if matching.type == pq.LabelModifierType.Include:
        return frozenset(matching.labels)
    return lhs - set(matching.labels)


_HANDLERS: dict[type, Callable[[pq.Expr, Catalog, Problems], Labels]] = {
    pq.VectorSelector: _selector,
    pq.MatrixSelector: _matrix,
    pq.NumberLiteral: _literal,
    pq.StringLiteral: _literal,
    pq.ParenExpr: _inner,
    pq.UnaryExpr: _inner,
    pq.SubqueryExpr: _inner,
    pq.Call: _call,
    pq.AggregateExpr: _aggregate,
    pq.BinaryExpr: _binary,
}
