"""Property-based neighbour check of the sensitivity argument (helpers for
test_sensitivity_fuzz.py).

A scenario is drawn with hypothesis: metadata with awkward bounds and contribution limits,
a few ordinary units plus one adversarial unit (many rows, many groups, values at, just
outside and far outside every bound, NaN, +-inf, -0.0, NULL), and queries built from
templates. Two datasets are loaded through a real Gateway: D (with the adversary) and D
minus the adversary. For every plan the rewriter accepts, the bounded SQL runs on both and
the change of every released measure vector must stay within the plan's Sensitivity, also
after the release's i64 clamp; quantile value vectors may change by at most the planned
rows and groups. Refusals (SqlgateError) are fine; any other error, in planning,
calibration or the engine, is a bug (an engine error that depends on data is an oracle).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
from hypothesis import strategies as st

from accountant.zcdp import rho_for_epsilon
from rewriter import plan_query
from rewriter.plan import DPPlan
from sqlgate import release
from sqlgate.errors import SqlgateError
from sqlgate.gateway import Gateway
from sqlgate.metadata import parse_dataset
from sqlgate.stored_sums import without_stored_sums

ADVERSARY = 999
GROUP_KEYS = ["a", "b", "c", "d"]
INT_KEYS = [0, 1, 2, 3]


# ---------------------------------------------------------------- awkward numbers


def _dyadic_half(draw) -> float:
    """(2m + 1) / 2^e: an exact half at fraction-bit position e - 1, at any magnitude the
    planner may give 0..16 fraction bits to."""
    e = draw(st.integers(1, 18))
    m = draw(st.one_of(st.integers(0, 8), st.integers(0, 2**20), st.integers(2**29, 2**31)))
    return (2 * m + 1) / 2.0**e


@st.composite
def magnitudes(draw) -> float:
    return draw(st.one_of(
        st.builds(lambda: 0.0),
        st.sampled_from([1e-300, 5e-324, 2.0**-17, 2.0**-16, 0.5, 1.0, 7.5, 100.0, 1e6,
                         600000.000244140625, 2.0**31 - 1, 2.0**31, 2.0**32 + 0.5, 1e10,
                         1e15, 2.0**53 - 1, 2.0**53, 2.0**62, 1e300]),
        st.composite(lambda d: _dyadic_half(d))(),
        st.floats(0, 1e6, allow_nan=False, allow_infinity=False),
        # Owner-style decimals: wide ones made VARIANCE's centred squares exceed their bound.
        st.integers(0, 10**12).map(lambda n: n / 1000),
    ))


@st.composite
def bounds(draw, col_type: str) -> tuple[float, float]:
    shape = draw(st.sampled_from(["pos", "neg", "span", "point", "sym"]))
    a, b = draw(magnitudes()), draw(magnitudes())
    lo, hi = min(a, b), max(a, b)
    if shape == "neg":
        lo, hi = -hi, -lo
    elif shape == "span":
        lo = -a
        hi = b
    elif shape == "point":
        lo = hi = draw(st.sampled_from([a, -a]))
    elif shape == "sym":
        lo, hi = -a, a
    if col_type == "int" and draw(st.booleans()):
        lo, hi = float(math.floor(lo)), float(math.ceil(hi))  # integer bounds (else as drawn)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            lo, hi = 0.0, 1.0
    return lo, hi


def _near(v: float) -> list:
    return [v, math.nextafter(v, math.inf), math.nextafter(v, -math.inf)]


@st.composite
def float_values(draw, lo: float, hi: float):
    special = [None, math.nan, math.inf, -math.inf, -0.0, 0.0, 1e300, -1e300, 2.0**62,
               (lo + hi) / 2, *_near(lo), *_near(hi)]
    return draw(st.one_of(st.sampled_from(special),
                          st.floats(lo, hi, allow_nan=False, allow_infinity=False)))


@st.composite
def int_values(draw, lo: float, hi: float):
    def clip(v: float) -> int:
        return int(max(-2**63, min(2**63 - 1, v)))
    special = [None, 0, 1, -1, 2**62, -2**62, 2**63 - 1, -2**63,
               clip(math.floor(lo)), clip(math.ceil(lo)), clip(math.floor(hi)), clip(math.ceil(hi)),
               clip(math.floor(lo)) - 1, clip(math.ceil(hi)) + 1]
    special = [v for v in special if v is None or -2**63 <= v <= 2**63 - 1]
    return draw(st.sampled_from(special))


def values_for(col_type: str, lo: float, hi: float):
    return int_values(lo, hi) if col_type == "int" else float_values(lo, hi)


# ---------------------------------------------------------------- scenario


@dataclass
class Scenario:
    meta: dict
    tables: dict[str, list[dict]]
    queries: list[str] = field(default_factory=list)

    def frames(self, with_adversary: bool) -> dict[str, pa.Table]:
        out = {}
        for name, rows in self.tables.items():
            kept = [r for r in rows if with_adversary or r.get("__owner") != ADVERSARY]
            columns = self.meta["tables"][name]["columns"]
            out[name] = pa.table({c: pa.array([r[c] for r in kept], type=_ARROW[_type(spec)])
                                  for c, spec in columns.items()})
        return out


_ARROW = {"int": pa.int64(), "float": pa.float64(), "string": pa.string()}


def _type(spec) -> str:
    return spec if isinstance(spec, str) else spec["type"]


@st.composite
def scenarios(draw) -> Scenario:
    x_type, y_type, z_type = (draw(st.sampled_from(["int", "float"])) for _ in range(3))
    xb, yb, zb = draw(bounds(x_type)), draw(bounds(y_type)), draw(bounds(z_type))
    limits = st.integers(1, 3)
    t_spec = {
        "privacy_unit": "uid",
        "max_groups_per_unit": draw(limits), "max_rows_per_group": draw(limits),
        "columns": {
            "uid": "int", "tid": "int",
            "g": ({"type": "string", "public_keys": draw(st.sampled_from([["a", "b"], ["a", "b", "c", "d"], ["a"]]))}
                  if draw(st.booleans()) else "string"),
            "h": ({"type": "int", "public_keys": [0, 1, 2]} if draw(st.booleans()) else "int"),
            "x": {"type": x_type, "lower": xb[0], "upper": xb[1]},
            "y": {"type": y_type, "lower": yb[0], "upper": yb[1]},
        }}
    # A NOT NULL column lets COUNT(y) share the row count's measure (_canonical_measure).
    y_nullable = draw(st.booleans())
    if not y_nullable:
        t_spec["columns"]["y"]["nullable"] = False
    for option, values in (("truncate_rows_per_unit", st.one_of(st.none(), st.integers(1, 3))),
                           ("max_rows_per_unit", st.one_of(st.none(), st.integers(1, 4)))):
        value = draw(values)
        if value is not None:
            t_spec[option] = value
    c_spec = {
        "unit_via": {"column": "tid", "table": "t", "references": "tid"},
        "max_groups_per_unit": draw(limits), "max_rows_per_group": draw(limits),
        "columns": {"tid": "int", "g2": "string", "z": {"type": z_type, "lower": zb[0], "upper": zb[1]}},
    }
    if draw(st.booleans()):
        c_spec["truncate_rows_per_unit"] = draw(st.integers(1, 3))
    unique_public = draw(st.booleans())
    meta = {
        "dataset": "d", "budget": {"epsilon": 1000, "delta": 1e-3},
        "query": {"epsilon": 1.0, "delta": 1e-6,
                  "mechanism": draw(st.sampled_from(["laplace", "gaussian"]))},
        "tables": {"t": t_spec, "c": c_spec,
                   "p": {"public": True, "columns": {"g": "string", "label": "string"}}},
    }
    t_rows, c_rows = [], []
    tid = iter(range(1, 10**6))
    units = [(u, draw(st.integers(1, 3))) for u in range(1, draw(st.integers(2, 4)) + 1)]
    units.append((ADVERSARY, draw(st.integers(4, 14))))
    for unit, count in units:
        adversary = unit == ADVERSARY
        key = st.sampled_from(GROUP_KEYS + [None] if adversary else GROUP_KEYS[:2])
        for _ in range(count):
            row_id = next(tid)
            t_rows.append({"__owner": unit, "uid": unit, "tid": row_id, "g": draw(key),
                           "h": draw(st.sampled_from(INT_KEYS + [None] if adversary else INT_KEYS[:2])),
                           "x": draw(values_for(x_type, *xb)),
                           "y": _not_null(draw(values_for(y_type, *yb)), y_nullable)})
            for _ in range(draw(st.integers(0, 4 if adversary else 2))):
                c_rows.append({"__owner": unit, "tid": row_id, "g2": draw(key),
                               "z": draw(values_for(z_type, *zb))})
    p_rows = [{"g": "a", "label": "A"}, {"g": "b", "label": "B"}, {"g": "c", "label": "C"}]
    if not unique_public:
        p_rows.append({"g": "a", "label": "A2"})
    scenario = Scenario(meta, {"t": t_rows, "c": c_rows, "p": p_rows})
    scenario.queries = draw(st.lists(queries(xb, yb), min_size=3, max_size=6))
    return scenario


def _not_null(value, nullable: bool):
    return 0 if value is None and not nullable else value


# ---------------------------------------------------------------- queries

_FROMS = {
    "t": "t",
    "fk": "t JOIN c ON c.tid = t.tid",
    "fk_rev": "c JOIN t ON t.tid = c.tid",
    "self": "t JOIN t t2 ON t2.uid = t.uid",
    "public": "t JOIN p ON p.g = t.g",
    "left_public": "t LEFT JOIN p ON p.g = t.g",
}


@st.composite
def queries(draw, xb, yb) -> str:
    source = draw(st.sampled_from(sorted(_FROMS)))
    columns = ["t.x", "t.y"] + (["c.z"] if source in ("fk", "fk_rev") else [])
    col = st.sampled_from(columns)
    templates = [
        lambda: "COUNT(*)", lambda: f"COUNT({draw(col)})", lambda: "COUNT(DISTINCT t.uid)",
        lambda: f"SUM({draw(col)})", lambda: f"AVG({draw(col)})", lambda: f"VARIANCE({draw(col)})",
        lambda: f"STDDEV({draw(col)})", lambda: f"MEDIAN({draw(col)})",
        lambda: f"PERCENTILE_CONT(0.25) WITHIN GROUP (ORDER BY {draw(col)})",
        lambda: f"MIN({draw(col)})", lambda: f"MAX({draw(col)})",
    ]
    picks = draw(st.lists(st.integers(0, len(templates) - 1), min_size=1, max_size=3))
    aggregates = [templates[i]() for i in picks]
    mid = _literal((xb[0] + xb[1]) / 2)
    keys = ["t.g", "t.h", "t.g, t.h", f"CASE WHEN t.x > {mid} THEN 'hi' ELSE 'lo' END",
            f"CASE WHEN t.y > {mid} THEN 0.5 WHEN t.y < 0 THEN -1 ELSE 2 END",
            f"width_bucket(t.x, {_literal(xb[0])}, {_literal(xb[1] if xb[1] > xb[0] else xb[0] + 1)}, 3)"]
    if source in ("public", "left_public"):
        keys.append("p.label")
    if source in ("fk", "fk_rev"):
        keys.append("c.g2")
    key = draw(st.one_of(st.none(), st.sampled_from(keys)))
    where = draw(st.sampled_from([None, f"t.x > {mid}", "t.g = 'a'", "t.y IS NOT NULL",
                                  "t.h IN (0, 1)", f"t.y <= {_literal(yb[1])}"]))
    select = ", ".join(([key] if key and "," not in key else []) + aggregates)
    sql = f"SELECT {select} FROM {_FROMS[source]}"
    if where:
        sql += f" WHERE {where}"
    if key:
        sql += f" GROUP BY {key}"
    return sql


def _literal(value: float) -> str:
    if float(value).is_integer() and abs(value) < 2**62:
        return str(int(value))
    return repr(float(value))


# ---------------------------------------------------------------- the check


@dataclass
class Outcome:
    planned: int = 0
    refused: int = 0
    moved: int = 0


class Neighbours:
    """D (with the adversary, dataset n1) and D minus the adversary (n0) in one Gateway."""

    def __init__(self, scenario: Scenario):
        self.scenario = scenario
        self.gateway = Gateway()
        self.loaded = True
        try:
            for name, adversary in (("n0", False), ("n1", True)):
                meta = parse_dataset({**scenario.meta, "dataset": name})
                self.gateway.add_dataset(meta, scenario.frames(with_adversary=adversary))
        except SqlgateError:
            self.loaded = False  # e.g. metadata the loader refuses: nothing to query

    def close(self) -> None:
        self.gateway.close()

    def plan(self, name: str, sql: str) -> DPPlan:
        visible = frozenset({name})
        return plan_query(sql, lambda node: self.gateway.catalog.resolve_table(node, visible))

    def run(self, sql: str) -> list[tuple]:
        return self.gateway.executor.run(sql).rows


def check_query(nb: Neighbours, sql: str, outcome: Outcome) -> None:
    try:
        plans = [nb.plan(name, sql) for name in ("n0", "n1")]
    except SqlgateError:
        outcome.refused += 1
        return
    outcome.planned += 1
    assert plans[0].measures == plans[1].measures, "bounds must come from metadata only"
    assert plans[0].quantiles == plans[1].quantiles
    plan = plans[0]
    mechanism = nb.scenario.meta["query"]["mechanism"]
    try:
        calibrated = release.calibrate(plan, epsilon=1.0, delta=1e-6, mechanism=mechanism,
                                       rho_for_epsilon=rho_for_epsilon)
    except SqlgateError:
        outcome.refused += 1
        return
    if plan.bounded_sql:
        before, after = (_vectors(nb, p) for p in plans)
        cells = _released_cells(plan, before, after)
        for index, measure in enumerate(plan.measures):
            raw = [_value(after, c, index) - _value(before, c, index) for c in cells]
            clamped = [release._clamp_i64(_value(after, c, index))
                       - release._clamp_i64(_value(before, c, index)) for c in cells]
            for diffs in (raw, clamped):
                _within(measure, [abs(d) for d in diffs], sql)
            if any(clamped):
                outcome.moved += 1
                # A measure the engine can move must get noise.
                assert calibrated.noise[measure.name].scale > 0, (sql, measure)
    if plan.quantile_sql:
        before, after = (_value_cells(nb, p) for p in plans)
        released = _released_cells(plan, before, after)
        for q in plan.quantiles:
            changed = 0
            for cell in released:
                a, b = before.get(cell, Counter()), after.get(cell, Counter())
                added = sum((b - a).values())
                assert not (a - b), (sql, "a neighbour removed someone else's values")
                assert added <= q.rows_per_unit, (sql, q, "rows per group", added)
                changed += bool(added)
            assert changed <= q.groups_per_unit, (sql, q, "groups per unit", changed)
        for name, spec in calibrated.quantiles.items():
            assert spec.scale > 0, (sql, name)


def _within(measure, diffs: list[int], sql: str) -> None:
    s = measure.sensitivity
    assert sum(1 for d in diffs if d) <= s.l0, (sql, measure, "L0", diffs)
    assert max(diffs, default=0) <= s.linf, (sql, measure, "Linf", diffs)
    assert sum(diffs) <= s.l1, (sql, measure, "L1", diffs)
    assert math.sqrt(sum(float(d) * d for d in diffs)) <= s.l2 * (1 + 1e-12), (sql, measure, "L2", diffs)


def _cell(values) -> tuple:
    # NaN keys are one group in the engine; match them across the two runs.
    return tuple(("nan",) if isinstance(v, float) and math.isnan(v) else v for v in values)


def _vectors(nb: Neighbours, plan: DPPlan) -> dict[tuple, tuple]:
    keys = len(plan.keys.key_names)
    out: dict[tuple, tuple] = {}
    for row in nb.run(plan.bounded_sql):
        cell = _cell(row[:keys])
        assert cell not in out, "one cell per group"
        out[cell] = tuple(row[keys:])
    return out


def _value(vectors: dict, cell: tuple, index: int) -> int:
    row = vectors.get(cell)
    return 0 if row is None or row[index] is None else int(row[index])


def _value_cells(nb: Neighbours, plan: DPPlan) -> dict[tuple, Counter]:
    keys = len(plan.keys.key_names)
    cells: dict[tuple, Counter] = {}
    for row in nb.run(plan.quantile_sql):
        values = tuple("nan" if isinstance(v, float) and math.isnan(v) else v for v in row[keys:])
        cells.setdefault(_cell(row[:keys]), Counter())[values] += 1
    return cells


def _released_cells(plan: DPPlan, before: dict, after: dict) -> list[tuple]:
    """The cells the release reads: the public cells (looked up by key, as the gateway does),
    the single cell without GROUP BY, or every group found (threshold)."""
    if plan.keys.mode == "none":
        return [()]
    if plan.keys.mode == "public":
        return [_cell(c) for c in plan.keys.public_cells]
    return sorted(set(before) | set(after), key=repr)


def check_stored_sums(nb: Neighbours, sql: str) -> bool:
    """The bounded SQL summing the catalog's stored columns (sqlgate/stored_sums.py) and
    truncating through its stored rank (sqlgate/stored_rank.py) gives the very engine rows
    of the same plan computing the per-row expression and ranking per query instead, on
    the dataset with the adversary. True when the plan read a stored column."""
    visible = frozenset({"n1"})
    try:
        stored = nb.plan("n1", sql)
        bare = plan_query(sql, without_stored_sums(
            lambda node: nb.gateway.catalog.resolve_table(node, visible)))
    except SqlgateError:
        return False
    if stored.bounded_sql == bare.bounded_sql:
        return False
    assert stored.measures == bare.measures, sql
    rows = [Counter(_cell(row) for row in nb.run(p.bounded_sql)) for p in (stored, bare)]
    assert rows[0] == rows[1], (sql, rows)
    return True


def check_stored_scenario(scenario: Scenario) -> int:
    """How many of the scenario's queries read stored sums (each checked as above)."""
    nb = Neighbours(scenario)
    try:
        return sum(check_stored_sums(nb, sql) for sql in scenario.queries) if nb.loaded else 0
    finally:
        nb.close()


def check_scenario(scenario: Scenario) -> Outcome:
    outcome = Outcome()
    nb = Neighbours(scenario)
    try:
        if not nb.loaded:
            return outcome
        for sql in scenario.queries:
            check_query(nb, sql, outcome)
    finally:
        nb.close()
    return outcome
