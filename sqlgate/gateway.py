"""The embedded gateway: catalog + rewriter + engine + accountant + release, in process.

Order of a query (privacy rule 4): plan (no data) -> cached answer or budget pre-check (one
ledger read, no write) -> reserve: the atomic check-and-charge, committed on a worker
(sqlgate/charge_ahead.py) -> run the bounded SQL (meanwhile the charge commits durably and,
when the plan alone fixes the answer's cells, OpenDP draws the noise on zeros:
sqlgate/noise_ahead.py) -> add the noise with OpenDP and post-process, held in memory ->
wait for the charge (refused: BudgetExhausted, the answer dropped unseen) -> store the noisy
answer for free identical repeats (its own write, not synced) -> release. Nothing noisy
leaves before the charge is durable; a failure after noise was added to data is charged; a
failure before it (engine error, timeout, cancel, dataset replaced) refunds the charge.
"""
from __future__ import annotations

import datetime
import hashlib
import logging
import math
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
from sqlglot import exp

from accountant import Accountant, SqliteLedger
from accountant.zcdp import rho_for_epsilon
from rewriter import plan_query
from rewriter.parse import parse_select
from rewriter.plan import DPPlan
from sqlgate import release as noise
from sqlgate.accuracy import output_columns
from sqlgate.catalog import Catalog, DatasetEntry, resolve_in
from sqlgate.charge_ahead import ChargeAhead
from sqlgate.errors import (Conflict, ExecutionFailed, InvalidParameter, PolicyRefused,
                            QueryCanceled)
from sqlgate.executor import DuckDBExecutor, sandboxed_duckdb
from sqlgate.metadata import Budget, DatasetMeta, load_dataset_yaml
from sqlgate.mock import mock_dataset_table
from sqlgate.noise_ahead import NoiseAhead
from sqlgate.plan_cache import PlanCache, PlannedQuery
from sqlgate.postprocess import (POSTPROCESS_MEMORY_LIMIT, run_postprocess, typed_keys,
                                 verified_projection)
from sqlgate.results import DPResult, ExactResult, Explanation, OutputColumn
from sqlgate.stored_sums import declared_columns_only

DEFAULT_STATEMENT_TIMEOUT_S = 30.0
EXACT_ROW_LIMIT = 10_000
MIN_EPSILON = 1e-6
MAX_EPSILON = 1e4
_MEASURE_FOR_MECHANISM = {"laplace": "pure", "gaussian": "zcdp"}
_log = logging.getLogger(__name__)


class Gateway:
    def __init__(self, home: str | Path | None = None, *, ledger=None,
                 statement_timeout_s: float = DEFAULT_STATEMENT_TIMEOUT_S,
                 threads: int | None = None):
        self._tmp = None
        if home is None:
            # An in-memory engine still needs a durable ledger file for its transactions.
            self._tmp = tempfile.TemporaryDirectory(prefix="sqlgate-")
            ledger_path = Path(self._tmp.name) / "ledger.sqlite"
            self.home = None
            self.executor = DuckDBExecutor(None, threads=threads)
        else:
            self.home = Path(home)
            self.home.mkdir(parents=True, exist_ok=True)
            ledger_path = self.home / "ledger.sqlite"
            self.executor = DuckDBExecutor(str(self.home / "data.duckdb"), threads=threads)
        self.statement_timeout_s = statement_timeout_s
        self.catalog = Catalog(self.executor, self.home)
        self.accountant = Accountant(ledger or SqliteLedger(str(ledger_path)))
        self._post = threading.local()
        self._plans = PlanCache()
        self._noise_ahead = NoiseAhead()
        self._charge_ahead = ChargeAhead()
        for entry in self.catalog.entries():
            self._register_budgets(entry.meta)

    # ------------------------------------------------------------ owner actions

    def add_dataset(self, meta: DatasetMeta, sources: Mapping[str, Any] | None = None, *,
                    replace: bool = False,
                    unique_columns: Mapping[str, frozenset[str]] | None = None) -> DatasetMeta:
        """`unique_columns` only for rows that live in another engine (Catalog.add)."""
        entry = self.catalog.add(meta, sources, replace=replace, unique_columns=unique_columns)
        self._register_budgets(entry.meta)
        return entry.meta

    def load_dataset_yaml(self, path: str | Path, *, replace: bool = False) -> DatasetMeta:
        return self.add_dataset(load_dataset_yaml(path), replace=replace)

    def drop_dataset(self, name: str) -> None:
        self.catalog.drop(name)

    def set_budget(self, analyst: str, dataset: str, budget: Budget, set_by: str = "owner"):
        self.catalog.entry(dataset)
        self.accountant.set_budget(analyst, self.catalog.entry(dataset).meta.name, budget,
                                   set_by=set_by)
        return self.budget(analyst, dataset)

    # ------------------------------------------------------------ reading metadata

    def datasets(self) -> list[DatasetMeta]:
        return [e.meta for e in self.catalog.entries()]

    def dataset(self, name: str) -> DatasetMeta:
        return self.catalog.entry(name).meta

    def budget(self, analyst: str, dataset: str):
        return self.accountant.status(analyst, self.catalog.entry(dataset).meta.name)

    def mock_table(self, dataset: str, table: str, rows: int = 100, seed: int = 0) -> pd.DataFrame:
        return mock_dataset_table(self.catalog.entry(dataset).meta, table, rows=rows, seed=seed)

    # ------------------------------------------------------------ analyst actions

    def describe(self, sql: str, *, scope: Iterable[str] | None = None) -> list[OutputColumn]:
        """Output columns of a query, without touching data or budget."""
        planned, _ = self._planned(sql, scope)
        return list(self._output_columns(planned, None))

    def explain(self, sql: str, *, analyst: str, epsilon: float | None = None,
                scope: Iterable[str] | None = None) -> Explanation:
        planned, entry = self._planned(sql, scope)
        plan = planned.plan
        epsilon = self._epsilon(entry.meta, epsilon)
        release_plan = self._calibrate(plan, entry.meta, epsilon)
        columns = self._output_columns(planned, release_plan)
        return Explanation(
            dataset=entry.meta.name, cost=release_plan.cost, columns=columns,
            rewritten_sql=plan.engine_sql, mechanism=entry.meta.mechanism,
            key_release=plan.keys.mode, budget=self.accountant.status(analyst, entry.meta.name),
            threshold=release_plan.threshold.threshold if release_plan.threshold else None,
            notes=_accuracy_notes(plan))

    def query(self, sql: str, *, analyst: str, epsilon: float | None = None,
              cancel: threading.Event | None = None,
              scope: Iterable[str] | None = None) -> DPResult:
        """One DP answer. `scope` limits which datasets the SQL may name (the caller's grants);
        others look exactly like missing ones."""
        planned, entry = self._planned(sql, scope)
        plan = planned.plan
        meta = entry.meta
        epsilon = self._epsilon(meta, epsilon)
        release_plan = self._calibrate(plan, meta, epsilon)
        query_key = _query_key(entry, plan, epsilon)
        # One ledger read: the cached answer (free repeat) or the budget pre-check.
        cached = self.accountant.cached_or_check(analyst, meta.name, query_key, release_plan.cost)
        if cached is not None:
            return DPResult.from_json_bytes(cached, cached=True)
        # The atomic check-and-charge (a reservation): re-checked and inserted here when the
        # ledger's lock is free (a refusal raises now, before the engine), committed (fsync)
        # on a worker while the engine runs (with the lock busy, the whole charge runs
        # there), and waited for below, before anything is released (charge_ahead.py).
        pending = self.accountant.reserve(analyst, meta.name, release_plan.cost,
                                          query_key=query_key, query_text=sql)
        reservation = self._charge_ahead.submit(self.accountant, pending)
        # Up to the noise, nothing has touched the data but the engine: any failure until
        # then refunds the reservation. The failure is raised outside its `except`, so a
        # refusal raised by the refund does not carry it as context.
        failure = None
        try:
            # Cells known from the plan: the noise is drawn (by OpenDP, on zeros) while the
            # engine runs; it does not depend on the data (sqlgate/noise_ahead.py).
            drawn = self._noise_ahead.submit(plan, release_plan)
            raw_rows, quantile_values = self._run_engine(planned, cancel)
            if cancel is not None and cancel.is_set():
                # Cancelled after the engine finished but before noise: refunded below.
                raise QueryCanceled("the query was cancelled before its answer was released")
            if not self.catalog.is_current(entry):
                # The dataset was replaced or dropped while the query ran: the plan's bounds
                # may not hold for what the engine read. No noise touched it yet.
                raise Conflict(f"dataset '{meta.name}' was replaced while the query ran; run "
                               f"it again")
            drawn_noise = drawn.result() if drawn is not None else None  # drawn on zeros
        except BaseException as exc:
            failure = exc
        if failure is not None:
            reason = _refund_reason(failure)
            outcome = reservation.refund(reason)  # raises a budget refusal, if any
            _mark_charge(failure, meta.name, outcome, release_plan.cost, reason)
            raise failure
        # Noise is applied to data from here on, and released only AFTER the charge is
        # durable (rule 4 is about release). If the charge was refused, the noisy answer is
        # dropped unseen. Anything that fails once noise was applied is charged (no refund)
        # before its error propagates: such an error may depend on noisy values, and an
        # analyst must not learn about them for free (the refusal then is BudgetExhausted,
        # whatever the noise).
        try:
            noisy = _noisy_table(plan, release_plan, raw_rows, quantile_values, drawn_noise,
                                 run_cells=self._noise_ahead.run_all)
            rows, columns = self._postprocess(planned, release_plan, noisy)
            result = DPResult(columns=columns, rows=rows, cost=release_plan.cost, cached=False,
                              query_id=uuid.uuid4().hex, dataset=meta.name, sql=sql,
                              rewritten_sql=plan.engine_sql, mechanism=meta.mechanism,
                              key_release=plan.keys.mode)
            answer = result.to_json_bytes()
        except BaseException as exc:
            failure = exc
        if failure is not None:
            # Outside the except: the refusal must not carry the noise-dependent failure
            # as its context (tracebacks and logs show it).
            reservation.charge_id()
            _mark_charge(failure, meta.name, "charged", release_plan.cost)
            raise failure
        charge_id = reservation.charge_id()
        self._remember(charge_id, answer)
        return result

    def _run_engine(self, planned: PlannedQuery, cancel: threading.Event | None):
        """The bounded rows and the quantile values (if any) of a plan, from the engine."""
        plan = planned.plan
        raw_rows = []
        if plan.bounded_sql:
            raw_rows = self.executor.run(plan.bounded_sql, timeout_s=self.statement_timeout_s,
                                         cancel=cancel).rows
        quantile_values = None
        if plan.quantile_sql:
            # Arrow where the engine offers it (DuckDB), with the values already gathered per
            # cell there; else a DataFrame of rows (other backends).
            if isinstance(self.executor, DuckDBExecutor):
                quantile_values = self.executor.run(
                    planned.listed_quantile_sql or plan.quantile_sql,
                    timeout_s=self.statement_timeout_s, cancel=cancel, as_arrow=True)
            else:
                quantile_values = self.executor.run(plan.quantile_sql, cancel=cancel,
                                                    timeout_s=self.statement_timeout_s,
                                                    as_frame=True)
        return raw_rows, quantile_values

    def _remember(self, charge_id: int, answer: bytes) -> None:
        """Store a charged answer for free identical repeats. A failure here costs only the
        cache (a repeat is charged again): the analyst paid for this answer and gets it."""
        try:
            self.accountant.record_answer(charge_id, answer)
        except Exception:  # noqa: BLE001 - the answer itself is charged and releasable
            _log.warning("could not cache the answer of privacy charge %s", charge_id,
                         exc_info=True)

    def run_exact(self, sql: str, dataset: str, *, row_limit: int = EXACT_ROW_LIMIT) -> ExactResult:
        """An exact, un-noised answer. Only for requests a data owner approved."""
        entry = self.catalog.entry(dataset)
        select = parse_select(sql)
        read = []
        for node in select.walk():
            if isinstance(node, exp.Table):
                if not isinstance(node.this, exp.Identifier):
                    raise PolicyRefused("only dataset tables can be read")
                if node.name.lower() in _cte_names(select):
                    continue
                meta, table = self.catalog.resolve_table(node)
                if meta.name != entry.meta.name:
                    raise PolicyRefused(f"the approved request covers dataset "
                                        f"'{entry.meta.name}' only")
                node.set("db", exp.to_identifier(meta.name, quoted=True))
                node.set("this", exp.to_identifier(table.name, quoted=True))
                read.append((node, table))
        # The declared columns only: never the catalog's hidden stored sums.
        select = declared_columns_only(select, read)
        limited = exp.select("*").from_(select.subquery("approved")).limit(row_limit + 1)
        raw = self.executor.run(limited.sql(dialect="duckdb"), timeout_s=self.statement_timeout_s)
        truncated = len(raw.rows) > row_limit
        rows = raw.rows[:row_limit]
        types = tuple(_python_type_name(rows, i) for i in range(len(raw.columns)))
        return ExactResult(columns=raw.columns, types=types, rows=rows, truncated=truncated)

    def close(self) -> None:
        self._noise_ahead.close()
        self._charge_ahead.close()
        self.executor.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------ internals

    def _register_budgets(self, meta: DatasetMeta) -> None:
        self.accountant.register_dataset(meta.name, measure=_MEASURE_FOR_MECHANISM[meta.mechanism],
                                         default_budget=meta.default_budget,
                                         analyst_budgets=dict(meta.analyst_budgets))

    def _plan(self, sql: str, scope: Iterable[str] | None = None) -> tuple[DPPlan, DatasetEntry]:
        planned, entry = self._planned(sql, scope)
        return planned.plan, entry

    def _planned(self, sql: str, scope: Iterable[str] | None = None
                 ) -> tuple[PlannedQuery, DatasetEntry]:
        """The plan of `sql` (cached by text, scope and catalog versions; never by data)."""
        if not isinstance(sql, str):
            raise InvalidParameter("the query must be a string")
        visible = None if scope is None else frozenset(name.lower() for name in scope)
        # One catalog snapshot for the cache key AND the entry returned: an entry read after
        # the plan could be a newer version than the plan, and the query's version re-check
        # (a replace while it runs) would then pass with stale bounds.
        entries = self.catalog.entries()
        versions = tuple((e.meta.name, e.version) for e in entries)
        metas = {e.meta.name.lower(): e.meta for e in entries
                 if visible is None or e.meta.name.lower() in visible}
        planned = self._plans.get_or_build((sql, visible, versions),
                                           lambda: self._build_plan(sql, metas))
        entry = next(e for e in entries if e.meta.name == planned.plan.dataset)
        return planned, entry

    def _build_plan(self, sql: str, metas: Mapping[str, DatasetMeta]) -> PlannedQuery:
        plan = plan_query(sql, lambda node: resolve_in(metas, node))
        postprocess_sql = plan.postprocess.sql(dialect="duckdb")
        _, types = self._run_postprocess(postprocess_sql, _empty_noisy_table(plan))
        fast = verified_projection(self._scratch(), plan.postprocess, postprocess_sql,
                                   _noisy_schema(plan))
        return PlannedQuery(plan, postprocess_sql, tuple(types), fast,
                            _listed_quantile_sql(plan))

    @staticmethod
    def _epsilon(meta: DatasetMeta, epsilon: float | None) -> float:
        if epsilon is None:
            return meta.query_epsilon
        # Below MIN_EPSILON the noise scale overflows OpenDP's calibration; above MAX_EPSILON
        # an answer is practically exact, which is what approval requests are for.
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) \
                or not math.isfinite(epsilon) or not MIN_EPSILON <= epsilon <= MAX_EPSILON:
            raise InvalidParameter(f"epsilon must be a number from {MIN_EPSILON:g} to "
                                   f"{MAX_EPSILON:g}")
        return float(epsilon)

    @staticmethod
    def _calibrate(plan: DPPlan, meta: DatasetMeta, epsilon: float):
        return noise.calibrate(plan, epsilon=epsilon, delta=meta.query_delta,
                               mechanism=meta.mechanism, rho_for_epsilon=rho_for_epsilon)

    def _scratch(self) -> duckdb.DuckDBPyConnection:
        """A per-thread engine that only ever holds noisy values (post-processing)."""
        conn = getattr(self._post, "conn", None)
        if conn is None:
            conn = sandboxed_duckdb(None, threads=1, memory_limit=POSTPROCESS_MEMORY_LIMIT)
            self._post.conn = conn
        return conn

    def _run_postprocess(self, postprocess_sql: str, noisy: pa.Table | pd.DataFrame):
        return run_postprocess(self._scratch(), postprocess_sql, noisy)

    def _output_columns(self, planned: PlannedQuery, release_plan) -> tuple[OutputColumn, ...]:
        # Types from binding the post-processing on an empty noisy table at planning time.
        return output_columns(planned.plan, planned.output_types, release_plan)

    def _postprocess(self, planned: PlannedQuery, release_plan, noisy: pa.Table):
        done = planned.fast_postprocess.run(noisy) if planned.fast_postprocess else None
        # None: not a plain projection, or values (NULL, zero divisor...) the engine decides.
        rows, types = done if done is not None else \
            self._run_postprocess(planned.postprocess_sql, noisy)
        return rows, output_columns(planned.plan, types, release_plan,
                                    _arrow_column(noisy), noisy.num_rows)


# ---------------------------------------------------------------- helpers


def _arrow_column(table: pa.Table):
    return lambda name: table.column(name).to_numpy()


def _mark_charge(failure: BaseException, dataset: str, outcome: str, cost,
                 reason: str | None = None) -> None:
    """Tell the caller's audit what a failed query cost (`failure.sqlgate_charge`): the
    owner's audit log then agrees with the ledger. Never part of the analyst's error body.
    outcome: "charged" (failed after noise), "refunded", "kept" (the refund failed) or
    "not charged"."""
    charged = outcome in ("charged", "kept")
    record = {"dataset": dataset, "charge": outcome,
              "epsilon": cost.epsilon if charged else 0.0,
              "delta": cost.delta if charged else 0.0}
    if reason is not None:
        record["reason"] = reason
    try:
        failure.sqlgate_charge = record
    except AttributeError:  # an exception type without a __dict__: the audit goes without
        pass


def _refund_reason(failure: BaseException) -> str:
    """The public reason a reservation is refunded with (kept in the ledger's history)."""
    if isinstance(failure, QueryCanceled):
        return "timeout" if "timeout" in failure.message else "cancelled"
    if isinstance(failure, ExecutionFailed):
        return "engine failed"
    if isinstance(failure, Conflict):
        return "dataset replaced"
    return "failed before noise"


def _query_key(entry: DatasetEntry, plan: DPPlan, epsilon: float) -> str:
    text = "\x1f".join([entry.meta.name, entry.version, plan.canonical_sql, repr(epsilon),
                        entry.meta.mechanism, repr(entry.meta.query_delta)])
    return hashlib.sha256(text.encode()).hexdigest()


def _noisy_table(plan: DPPlan, release_plan, raw_rows: list[tuple],
                 quantile_values: pd.DataFrame | None = None,
                 drawn: Mapping[str, list[int]] | None = None,
                 run_cells: noise.CellRunner | None = None) -> pa.Table:
    """Keys (public or thresholded) and noisy measures: everything post-processing sees.
    `drawn`: each measure's noise drawn ahead for the plan's known cells (noise_ahead.py).
    `run_cells`: runs independent OpenDP releases side by side (many threshold keys, the
    cells of a grouped quantile; release.py).

    Built as an Arrow table straight from the Python lists: post-processing binds Arrow
    directly, and a pandas frame in between cost ~2-3 ms per query."""
    key_count = len(plan.keys.key_names)
    measures = plan.measures
    by_key = {tuple(row[:key_count]): row[key_count:] for row in raw_rows}
    if plan.keys.mode == "none":
        cells = [()]
    elif plan.keys.mode == "public":
        cells = list(plan.keys.public_cells)
    else:
        count_index = [m.name for m in measures].index(plan.keys.threshold_measure)
        raw_keys = list(by_key)
        counts = {str(i): by_key[k][count_index] for i, k in enumerate(raw_keys)}
        kept = noise.threshold_keys(release_plan, counts, run_cells=run_cells)
        # Keep the order stable and independent of the data's row order.
        cells = [raw_keys[int(i)] for i in sorted(kept, key=int)]
        cells.sort(key=lambda key: tuple((v is None, str(v)) for v in key))
        kept_counts = {raw_keys[int(i)]: v for i, v in kept.items()}
    names: list[str] = []
    arrays: list[pa.Array] = []
    for i, name in enumerate(plan.keys.key_names):
        names.append(name)
        arrays.append(_key_array([cell[i] for cell in cells], plan.keys.key_types[i]))
    missing = (None,) * len(measures)
    for index, m in enumerate(measures):
        if plan.keys.mode == "threshold" and m.name == plan.keys.threshold_measure:
            values = [kept_counts[cell] for cell in cells]
        else:
            clean = [_as_int(by_key.get(cell, missing)[index]) for cell in cells]
            values = noise.add_drawn(clean, drawn[m.name]) if drawn is not None \
                else noise.noisy_vector(release_plan.noise[m.name], clean)
        names.append(m.name)
        arrays.append(pa.array(values, type=pa.int64()))
    if plan.quantiles:
        values_by_cell = _values_by_cell(quantile_values, key_count)
        for i, q in enumerate(plan.quantiles):
            empty = np.empty(0)
            # NaN here is a NULL the SQL kept (the clamp maps NaN itself to `upper`): skipped.
            cell_values = [_without_nan(values_by_cell.get(cell, {}).get(i, empty))
                           for cell in cells]
            names.append(q.name)
            arrays.append(pa.array(noise.noisy_quantiles(q, release_plan.quantiles[q.name],
                                                         cell_values, run_cells=run_cells),
                                   type=pa.float64()))
    return pa.Table.from_arrays(arrays, names=names)


def _without_nan(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    missing = np.isnan(values)
    return values[~missing] if missing.any() else values


_ARROW_KEY_TYPES = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(),
                    "date": pa.date32(), "string": pa.string()}


def _key_array(values: list, type_name: str) -> pa.Array:
    """A key column typed as the pandas path types it (Int64, float64, boolean, date,
    string). Values Arrow will not take as they are (date keys given as text, ints in a
    float key) go through that pandas path."""
    arrow_type = _ARROW_KEY_TYPES.get(type_name)
    if arrow_type is not None and (type_name != "string"
                                   or all(v is None or isinstance(v, str) for v in values)):
        try:
            return pa.array(values, type=arrow_type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            pass
    series = typed_keys(pd.Series(values, dtype="object"), type_name)
    return pa.Array.from_pandas(series)


def _listed_quantile_sql(plan: DPPlan) -> str | None:
    """The quantile value query with each cell's values gathered by DuckDB into one list per
    quantile. Grouping 150-600k values by cell in numpy (string keys dictionary-encoded,
    one mask per cell) cost more than DuckDB's hash aggregate: TPC-H q19 37 -> 19 ms,
    q10 9 -> 6 ms. Without keys there is one cell, and plain rows are cheaper."""
    if not plan.quantile_sql or not plan.keys.key_names:
        return None
    keys = ", ".join(f'"{name}"' for name in plan.keys.key_names)
    lists = ", ".join(f'LIST("v_{q.name}") AS "v_{q.name}"' for q in plan.quantiles)
    return (f'SELECT {keys}, {lists} FROM ({plan.quantile_sql}) AS "__values" '
            f'GROUP BY {keys}')


def _values_by_cell(values: pa.Table | pd.DataFrame | None,
                    key_count: int) -> dict[tuple, dict[int, np.ndarray]]:
    """Each cell's value vectors (one per quantile), from the bounded value query: one row
    per value, or one row per cell with a list of values per quantile (DuckDB's lists).

    Rows are grouped with Arrow dictionary codes and one stable argsort instead of a pandas
    groupby loop, which built a sub-frame per cell (~5 ms per query on 150k values)."""
    if values is None:
        return {}
    if isinstance(values, pd.DataFrame):
        values = pa.Table.from_pandas(values, preserve_index=False)
    if values.num_rows == 0:
        return {}
    names = values.column_names
    if any(pa.types.is_list(values.schema.field(c).type) for c in names[key_count:]):
        return _values_by_listed_cell(values, key_count)
    value_arrays = [values.column(c).to_numpy().astype(float, copy=False)
                    for c in names[key_count:]]
    if key_count == 0:
        return {(): dict(enumerate(value_arrays))}
    codes = np.zeros(values.num_rows, dtype=np.int64)
    keys: list[tuple] = [()]  # the key of every code
    for c in names[:key_count]:
        encoded = values.column(c).combine_chunks().dictionary_encode(null_encoding="encode")
        column_keys = [_key_scalar(v) for v in encoded.dictionary.to_pylist()]
        width = len(column_keys)
        codes = codes * width + encoded.indices.to_numpy().astype(np.int64)
        if len(keys) * width > 4 * values.num_rows:
            # Many keys: renumber the codes present, so they stay small (no overflow, and
            # bincount below stays proportional to the rows).
            present, codes = np.unique(codes, return_inverse=True)
            keys = [keys[p // width] + (column_keys[p % width],) for p in present.tolist()]
        else:
            keys = [k + (v,) for k in keys for v in column_keys]
    counts = np.bincount(codes, minlength=len(keys))
    groups = np.flatnonzero(counts)
    cells = {}
    if len(groups) <= _MASKED_GROUPS:
        # Few cells (public key sets): one vectorised mask per cell is ~4x cheaper than
        # sorting all codes. Values stay in row order, as the sort below keeps them.
        for code in groups.tolist():
            mask = codes == code
            cells[keys[code]] = {i: array[mask] for i, array in enumerate(value_arrays)}
        return cells
    order = np.argsort(codes, kind="stable")
    bounds = np.cumsum(counts[groups])[:-1]
    split = [np.split(array[order], bounds) for array in value_arrays]
    for g, code in enumerate(groups.tolist()):
        cells[keys[code]] = {i: split[i][g] for i in range(len(value_arrays))}
    return cells


def _values_by_listed_cell(values: pa.Table, key_count: int) -> dict[tuple, dict[int, np.ndarray]]:
    names = values.column_names
    keys = [tuple(_key_scalar(v) for v in row)
            for row in zip(*(values.column(c).to_pylist() for c in names[:key_count]))]
    cells: dict[tuple, dict[int, np.ndarray]] = {key: {} for key in keys}
    for i, name in enumerate(names[key_count:]):
        lists = values.column(name).combine_chunks()
        # offsets index into .values (the whole child array), also for a sliced array.
        offsets = lists.offsets.to_numpy()
        flat = lists.values.to_numpy(zero_copy_only=False).astype(float, copy=False)
        for row, key in enumerate(keys):
            cells[key][i] = flat[offsets[row]:offsets[row + 1]]
    return cells


# Up to this many cells, _values_by_cell selects each cell with a mask instead of a sort.
_MASKED_GROUPS = 16


def _key_scalar(value):
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, datetime.datetime):
        return value.date()  # as the pandas path did (Timestamp keys matched as dates)
    return value


def _noisy_schema(plan: DPPlan) -> pa.Schema:
    """The Arrow schema _noisy_table gives (keys through _key_array's Arrow types)."""
    fields = [pa.field(name, _ARROW_KEY_TYPES.get(type_name, pa.string()))
              for name, type_name in zip(plan.keys.key_names, plan.keys.key_types)]
    fields += [pa.field(m.name, pa.int64()) for m in plan.measures]
    fields += [pa.field(q.name, pa.float64()) for q in plan.quantiles]
    return pa.schema(fields)


def _empty_noisy_table(plan: DPPlan) -> pd.DataFrame:
    frame = pd.DataFrame({name: [] for name in plan.keys.key_names})
    for i, name in enumerate(plan.keys.key_names):
        frame[name] = typed_keys(frame[name], plan.keys.key_types[i])
    for m in plan.measures:
        frame[m.name] = pd.Series([], dtype="int64")
    for q in plan.quantiles:
        frame[q.name] = pd.Series([], dtype="float64")
    return frame


def _accuracy_notes(plan: DPPlan) -> tuple[str, ...]:
    notes = []
    if any(o.ratio_of for o in plan.outputs):
        notes.append("AVG/VARIANCE/STDDEV accuracy depends on group size: roughly "
                     "(ci95(sum) + |avg| * ci95(count)) / count")
    if plan.keys.mode == "threshold":
        notes.append("group keys come from the data and are released only when their noisy "
                     "count passes the threshold")
    notes.extend(plan.notes)  # how contributions were bounded (rewriter: ingest / query time)
    return tuple(notes)


def _cte_names(select: exp.Select) -> set[str]:
    with_ = select.args.get("with_") or select.args.get("with")
    if not with_:
        return set()
    return {cte.alias.lower() for cte in with_.expressions}


def _python_type_name(rows: list[tuple], index: int) -> str:
    for row in rows:
        value = row[index]
        if value is None:
            continue
        if isinstance(value, bool):
            return "bool"
        if isinstance(value, int):
            return "int"
        if isinstance(value, float):
            return "float"
        if hasattr(value, "isoformat"):
            return "date"
        return "string"
    return "string"


def _as_int(value) -> int:
    return 0 if value is None else int(value)
