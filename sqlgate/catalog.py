"""The datasets of a domain: metadata, and their tables loaded into the engine.

Loading is the owner's action and is all-or-nothing: every table of a dataset is staged,
checked against the metadata and swapped in inside one engine transaction; on any error the
previous state stays as it was. Sources are read with pyarrow in batches (no engine file
access, large files stream) and handed to DuckDB in memory.

Tables load parents first: a `unit_via` table declaring `truncate_rows_per_unit` is stored
truncated per unit of the stored parent row it joins (rewriter/truncation.py
`ingest_truncation_sql`), and the parent's referenced column must then be a key: the load is
refused unless its values are distinct (`check_keys`), and only then is the fact recorded in
the parent's `TableMeta.unique_columns`, where the planner relies on it.
"""
from __future__ import annotations

import json
import logging
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import pyarrow as pa
from sqlglot import exp

from sqlgate.errors import DataLoadError, MetadataError, NotFound, UndefinedTable
from sqlgate.executor import DuckDBExecutor
from sqlgate.metadata import (KEY_TYPES, DatasetMeta, StoredSum, TableMeta, dataset_to_dict,
                              enforced_key_columns, load_order, parse_dataset)
from rewriter.truncation import ingest_truncation_sql
from sqlgate.stored_rank import (planned_rank, ranks_from_json, ranks_to_json, with_rank_column,
                                 with_stored_ranks)
from sqlgate.stored_sums import (planned_sums, sums_from_json, sums_to_json, with_stored_sums,
                                 with_sum_columns)

_LOG = logging.getLogger(__name__)

_DUCKDB_TYPES = {"int": "BIGINT", "float": "DOUBLE", "string": "VARCHAR", "bool": "BOOLEAN",
                 "date": "DATE"}
_BATCH_ROWS = 64 * 1024


@dataclass(frozen=True)
class DatasetEntry:
    meta: DatasetMeta
    version: str


class Catalog:
    def __init__(self, executor: DuckDBExecutor, home: Path | None):
        self._executor = executor
        self._dir = home / "catalog" if home else None
        self._lock = threading.RLock()
        self._entries: dict[str, DatasetEntry] = {}
        if self._dir:
            self._dir.mkdir(parents=True, exist_ok=True)
            for path in sorted(self._dir.glob("*.json")):
                saved = json.loads(path.read_text())
                meta = parse_dataset(saved["metadata"])
                unique = self._proved_keys(meta, saved.get("unique_columns", {}))
                if unique is None:
                    continue
                meta = _with_unique_columns(meta, unique)
                stored = self._stored_columns(meta)
                meta = with_stored_sums(meta, sums_from_json(meta, saved.get("stored_sums"), stored))
                meta = with_stored_ranks(meta, ranks_from_json(meta, saved.get("stored_ranks"),
                                                               stored))
                self._entries[meta.name.lower()] = DatasetEntry(meta, saved["version"])

    def _stored_columns(self, meta: DatasetMeta) -> dict[str, set[str]]:
        """The columns the engine holds for each table of `meta` (owner-side, metadata of
        the stored tables only, never their content)."""
        conn = self._executor.connection.cursor()
        try:
            rows = conn.execute("SELECT table_name, column_name FROM duckdb_columns() "
                                "WHERE schema_name = ? AND NOT internal",
                                [meta.name]).fetchall()
        finally:
            conn.close()
        found: dict[str, set[str]] = {}
        for table, column in rows:
            found.setdefault(table, set()).add(column)
        return found

    def _proved_keys(self, meta: DatasetMeta, recorded: Mapping[str, Any]
                     ) -> dict[str, Any] | None:
        """The saved unique columns, plus any `unit_via` key the metadata requires that was
        not recorded (a dataset stored before every such key was enforced), proved on the
        stored table now. A key that repeats keeps the dataset out of service (logged): its
        per-person bounds would not hold. None then."""
        unique = {name: set(columns) for name, columns in recorded.items()}
        for name, keys in enforced_key_columns(meta).items():
            missing = frozenset(keys) - unique.get(name, set())
            if not missing:
                continue
            conn = self._executor.connection.cursor()
            try:
                check_keys(conn, f'"{meta.name}"."{name}"', meta.tables[name], missing)
            except DataLoadError as refused:
                _LOG.warning("dataset '%s' is not served: %s; load it again", meta.name,
                             refused.message)
                return None
            finally:
                conn.close()
            unique.setdefault(name, set()).update(missing)
        return unique

    # ------------------------------------------------------------ reading

    def entries(self) -> list[DatasetEntry]:
        return sorted(self._entries.values(), key=lambda e: e.meta.name)

    def is_current(self, entry: DatasetEntry) -> bool:
        """Whether `entry` is still the published version of its dataset."""
        current = self._entries.get(entry.meta.name.lower())
        return current is not None and current.version == entry.version

    def entry(self, name: str) -> DatasetEntry:
        found = self._entries.get(name.lower())
        if found is None:
            raise NotFound(f"dataset '{name}' does not exist")
        return found

    def resolve_table(self, node: exp.Table, scope: frozenset[str] | None = None
                      ) -> tuple[DatasetMeta, TableMeta]:
        """The dataset and table a SQL table reference names.

        `scope` (lower-case dataset names) hides every other dataset: a caller cannot tell a
        dataset it may not query from one that does not exist.
        """
        metas = {k: e.meta for k, e in self._entries.items() if scope is None or k in scope}
        return resolve_in(metas, node)

    # ------------------------------------------------------------ loading

    def add(self, meta: DatasetMeta, sources: Mapping[str, Any] | None = None, *,
            replace: bool = False,
            unique_columns: Mapping[str, frozenset[str]] | None = None) -> DatasetEntry:
        """Load and publish a dataset. `unique_columns`: for data whose rows live in another
        engine (`sources` are then empty stand-ins), the distinct columns established on that
        engine; the stand-ins' content (vacuously distinct) is never consulted for them.
        Rows stored here get their stored sums (sqlgate/stored_sums.py) and stored
        truncation ranks (sqlgate/stored_rank.py); stand-ins do not: the engine that runs
        the queries has no such columns."""
        sources = dict(sources or {})
        unknown = set(sources) - set(meta.tables)
        if unknown:
            raise MetadataError("tables", f"data given for undeclared table(s): {', '.join(sorted(unknown))}")
        with self._lock:
            key = meta.name.lower()
            if key in self._entries and not replace:
                raise DataLoadError(f"dataset '{meta.name}' already exists; replace it explicitly")
            for table in meta.tables.values():
                if table.name not in sources and table.source is None:
                    raise MetadataError(f"tables.{table.name}.source", "no data given for this table")
            previous = self._entries.get(key)
            conn = self._executor.connection.cursor()
            try:
                conn.execute("BEGIN TRANSACTION")
                conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{meta.name}"')
                if previous is not None:
                    for old in previous.meta.tables.values():
                        conn.execute(f'DROP TABLE IF EXISTS "{meta.name}"."{old.name}"')
                keys = enforced_key_columns(meta)
                stored_here = unique_columns is None
                sums = {t.name: planned_sums(t) for t in meta.tables.values()} \
                    if stored_here and meta.stored_sums else {}
                # Parents first: a unit_via table is truncated against its stored parent.
                for table in load_order(meta):
                    source = sources.get(table.name, table.source)
                    parent = meta.tables[table.unit_via.table] if table.unit_via else None
                    _load_table(conn, meta.name, table, source,
                                keys=keys.get(table.name, frozenset()), parent=parent,
                                sums=sums.get(table.name, {}), rank=stored_here)
                if unique_columns is not None:
                    unique = dict(unique_columns)
                else:
                    unique = {t.name: _unique_columns(conn, meta.name, t)
                              for t in meta.tables.values() if t.public}
                    # Proved distinct by _load_table (or the load failed above).
                    unique.update(keys)
                meta = with_stored_sums(_with_unique_columns(meta, unique), sums)
                if stored_here:
                    ranks = {t.name: planned_rank(t) for t in meta.tables.values()}
                    meta = with_stored_ranks(meta, {n: r for n, r in ranks.items() if r})
                if previous is not None:
                    # Retire the old version BEFORE the new data becomes visible: a query
                    # planned against the old metadata that reads the new tables then finds
                    # its version gone when it re-checks (Gateway.query), and is refused
                    # before any noise or charge instead of releasing with stale bounds.
                    self._entries[key] = DatasetEntry(previous.meta, f"replacing-{uuid.uuid4().hex}")
                conn.execute("COMMIT")
            except BaseException:
                try:
                    conn.execute("ROLLBACK")
                except Exception:
                    pass
                if previous is not None:
                    self._entries[key] = previous
                raise
            finally:
                conn.close()
            entry = DatasetEntry(meta, uuid.uuid4().hex)
            self._save(entry)
            self._entries[key] = entry
            return entry

    def forget_stored_columns(self) -> None:
        """Plan every dataset on the per-row sum expressions and per-query truncation
        ranking from now on: queries are about to run on another engine
        (`sqlgate.backends.use_executor`), which holds no stored-sum or rank columns. In
        memory only (the saved catalog keeps the facts of this engine's tables). Each such
        dataset gets a version derived from its own, so no plan cached with the stored
        columns is used again, and answers stay keyed alike across restarts."""
        with self._lock:
            for key, entry in list(self._entries.items()):
                if any(t.stored_sums or t.stored_rank for t in entry.meta.tables.values()):
                    meta = with_stored_ranks(with_stored_sums(entry.meta, {}), {})
                    self._entries[key] = DatasetEntry(meta, f"{entry.version}-computed-sums")

    def drop(self, name: str) -> None:
        with self._lock:
            entry = self.entry(name)
            conn = self._executor.connection.cursor()
            try:
                conn.execute(f'DROP SCHEMA IF EXISTS "{entry.meta.name}" CASCADE')
            finally:
                conn.close()
            del self._entries[entry.meta.name.lower()]
            if self._dir:
                (self._dir / f"{entry.meta.name.lower()}.json").unlink(missing_ok=True)

    def _save(self, entry: DatasetEntry) -> None:
        if not self._dir:
            return
        body = {"metadata": dataset_to_dict(entry.meta), "version": entry.version,
                "unique_columns": {t.name: sorted(t.unique_columns)
                                   for t in entry.meta.tables.values() if t.unique_columns},
                "stored_sums": sums_to_json(entry.meta),
                "stored_ranks": ranks_to_json(entry.meta)}
        path = self._dir / f"{entry.meta.name.lower()}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, indent=2, default=str))
        tmp.replace(path)


def resolve_in(datasets: Mapping[str, DatasetMeta], node: exp.Table
               ) -> tuple[DatasetMeta, TableMeta]:
    """Resolve `schema.table` or a bare `table` (unique across `datasets`, keyed by lower-case
    name); errors name only what the query wrote and the datasets given."""
    if node.catalog:
        raise UndefinedTable(f"table {node.sql()} does not exist (catalogs are not used)")
    table_name = node.name.lower()
    if node.db:
        meta = datasets.get(node.db.lower())
        table = meta.table(table_name) if meta else None
        if table is None:
            raise UndefinedTable(f"table '{node.db}.{node.name}' does not exist")
        return meta, table
    matches = [(m, m.table(table_name)) for m in datasets.values()
               if m.table(table_name) is not None]
    if not matches:
        raise UndefinedTable(f"table '{node.name}' does not exist")
    if len(matches) > 1:
        names = ", ".join(sorted(f"{m.name}.{table_name}" for m, _ in matches))
        raise UndefinedTable(f"table name '{node.name}' is ambiguous; qualify it: {names}")
    return matches[0]


def _load_table(conn, schema: str, table: TableMeta, source: Any, *,
                keys: frozenset[str] = frozenset(), parent: TableMeta | None = None,
                sums: Mapping[str, StoredSum] | None = None, rank: bool = False) -> None:
    """Stage, check and store one table. `keys`: columns that must hold distinct non-NULL
    values (a child truncates through them); `parent`: the unit_via parent, already stored;
    `sums`: hidden stored-sum columns to add, computed over the rows kept; `rank`: store the
    query-time truncation rank too, if the table is truncated at query time."""
    reader = _open_source(source, table)
    names = {n.lower(): n for n in reader.schema.names}
    missing = [c for c in table.columns if c not in names]
    if missing:
        raise DataLoadError(f"table '{table.name}': the data has no column(s) "
                            f"{', '.join(missing)} declared in the metadata")
    staging = f"__staging_{table.name}"
    view = f"__source_{uuid.uuid4().hex}"
    conn.register(view, reader)
    try:
        casts = []
        for col in table.columns.values():
            src = f'"{names[col.name]}"'
            target = _DUCKDB_TYPES[col.type]
            converted = f"TRY_CAST({src} AS {target})"
            if col.type == "bool":
                converted = f"TRY_CAST(CAST({src} AS VARCHAR) AS BOOLEAN)"
            casts.append(f'{converted} AS "{col.name}"')
        conn.execute(f'CREATE TEMP TABLE "{staging}" AS SELECT {", ".join(casts)}, '
                     f'{", ".join(f"{src_col} AS __raw_{i}" for i, src_col in enumerate(_null_probe(table, names)))} '
                     f'FROM "{view}"')
    finally:
        conn.unregister(view)
    try:
        _check_staged(conn, staging, table)
        check_keys(conn, f'"{staging}"', table, keys)
        select = ", ".join(f'"{c}"' for c in table.columns)
        target = f'"{schema}"."{table.name}"'
        if table.truncate_rows_per_unit and (table.privacy_unit or table.unit_via):
            # Deterministic choice of k rows per unit: a hash of the row, ties by the row
            # itself, never its position (the same rule as query-time truncation); a
            # unit_via table is ranked per unit of the stored parent row it joins.
            stored_parent = f'"{schema}"."{parent.name}"' if parent is not None else None
            kept = ingest_truncation_sql(table, f'"{staging}"', parent, stored_parent)
        else:
            kept = f'SELECT {select} FROM "{staging}"'
        stored = with_sum_columns(kept, sums or {})
        if rank:
            # Over the rows stored (after any ingest truncation), which queries then read.
            stored = with_rank_column(stored, table)
        conn.execute(f'CREATE TABLE {target} AS ' + stored)
    finally:
        conn.execute(f'DROP TABLE IF EXISTS "{staging}"')


# Types whose `=` is plain value identity in DuckDB, as COUNT(DISTINCT) counts it. Floats are
# left out: -0.0 = 0.0 and NaN handling make "distinct" and "joins to one row" differ.
UNIQUE_TYPES = KEY_TYPES


def check_keys(conn, relation: str, table: TableMeta, keys: frozenset[str]) -> None:
    """Refuse the load unless every column of `keys` has distinct non-NULL values.

    A child declaring truncate_rows_per_unit through unit_via is truncated per unit of the
    parent row it joins, and the planner bounds rows per unit through that join: both need
    each child row to meet at most one parent row. The fact is enforced here, never read from
    private data to choose a plan. Owner-facing; names the table and column, no values."""
    require_distinct(lambda sql: conn.execute(sql).fetchone(), relation, table, keys)


def require_distinct(fetch_row, relation: str, table: TableMeta, keys: Iterable[str]) -> None:
    """check_keys on any engine: `fetch_row(sql)` runs one SELECT and returns its row."""
    keys = sorted(keys)
    repeated = sorted(set(keys) - distinct_columns(fetch_row, relation, keys))
    if repeated:
        raise DataLoadError(key_refusal(table, repeated))


def distinct_columns(fetch_row, relation: str, columns: list[str]) -> frozenset[str]:
    """The `columns` whose non-NULL values are all distinct in `relation` (NULLs never
    satisfy `=`, so they do not count); `fetch_row(sql)` runs one SELECT, on any engine."""
    if not columns:
        return frozenset()
    checks = ", ".join(f'COUNT("{c}") = COUNT(DISTINCT "{c}")' for c in columns)
    row = fetch_row(f"SELECT {checks} FROM {relation}")
    return frozenset(c for c, distinct in zip(columns, row) if distinct)


def public_key_candidates(table: TableMeta) -> list[str]:
    """The columns of a public table whose distinctness may be recorded (`=` is identity)."""
    return [c.name for c in table.columns.values() if c.type in UNIQUE_TYPES]


def key_refusal(table: TableMeta, columns: list[str]) -> str:
    if table.unit_is_key and table.privacy_unit in columns:
        return (f"table '{table.name}': the privacy unit {table.privacy_unit} is declared unique "
                "(one row per unit) but the data repeats some values; deduplicate it, or drop "
                "`unique` and bound the rows per unit (max_rows_per_unit or "
                "truncate_rows_per_unit)")
    return (f"table '{table.name}': column(s) {', '.join(columns)} must hold distinct values "
            "(NULLs aside), because a table reaches its privacy unit through them (unit_via): "
            "a row joining two of its rows would belong to two people. The data repeats some "
            "values; deduplicate the key")


def _unique_columns(conn, schema: str, table: TableMeta) -> frozenset[str]:
    """The columns of a loaded public table whose non-NULL values are all distinct.

    Public tables are public data, so this fact may come from their content: a private row
    joined ON public.col = private.col then meets at most one public row, which is what lets
    the rewriter keep a truncated table's rows-per-unit bound through the join. NULLs never
    satisfy `=`, so they do not count. Never computed for private tables."""
    if not table.public:
        return frozenset()
    return distinct_columns(lambda sql: conn.execute(sql).fetchone(),
                            f'"{schema}"."{table.name}"', public_key_candidates(table))


def _with_unique_columns(meta: DatasetMeta, unique: Mapping[str, Any]) -> DatasetMeta:
    from dataclasses import replace
    enforced = enforced_key_columns(meta)
    tables = {}
    for name, table in meta.tables.items():
        columns = frozenset(str(c).lower() for c in unique.get(name, ()))
        # Public tables: columns they declare. Private tables: only the keys the loader
        # enforces (metadata decides which), never anything read from their content.
        allowed = set(table.columns) if table.public else enforced.get(name, frozenset())
        columns = columns & allowed
        tables[name] = replace(table, unique_columns=frozenset(columns))
    return replace(meta, tables=tables)


def _null_probe(table: TableMeta, names: dict[str, str]) -> list[str]:
    return [f'"{names[c]}"' for c in table.columns]


def _check_staged(conn, staging: str, table: TableMeta) -> None:
    checks = []
    for i, col in enumerate(table.columns.values()):
        raw = f"__raw_{i}"
        checks.append(f'SUM(CASE WHEN {raw} IS NOT NULL AND "{col.name}" IS NULL THEN 1 ELSE 0 END)')
        checks.append(f'SUM(CASE WHEN {raw} IS NULL THEN 1 ELSE 0 END)')
    counts = conn.execute(f'SELECT {", ".join(checks)} FROM "{staging}"').fetchone()
    problems = []
    for i, col in enumerate(table.columns.values()):
        unconvertible, nulls = counts[2 * i] or 0, counts[2 * i + 1] or 0
        if unconvertible:
            problems.append(f"column '{col.name}': {unconvertible} value(s) are not of type {col.type}")
        if nulls and (not col.nullable or col.name == table.privacy_unit):
            what = "the privacy unit" if col.name == table.privacy_unit else "declared not nullable"
            problems.append(f"column '{col.name}': {nulls} NULL value(s), but it is {what}")
    if problems:
        raise DataLoadError(f"table '{table.name}' does not match its metadata: " + "; ".join(problems))


def _open_source(source: Any, table: TableMeta) -> pa.RecordBatchReader:
    """A streaming reader over a CSV/Parquet path, a pandas DataFrame or an Arrow table."""
    if source is None:
        raise MetadataError(f"tables.{table.name}.source", "no data given for this table")
    if isinstance(source, pa.RecordBatchReader):
        return source
    if isinstance(source, pa.Table):
        return pa.RecordBatchReader.from_batches(source.schema, source.to_batches(_BATCH_ROWS))
    if hasattr(source, "to_records") and hasattr(source, "columns"):  # pandas DataFrame
        arrow = pa.Table.from_pandas(source, preserve_index=False)
        return pa.RecordBatchReader.from_batches(arrow.schema, arrow.to_batches(_BATCH_ROWS))
    path = Path(str(source))
    if not path.is_file():
        raise DataLoadError(f"table '{table.name}': source file not found: {path.name}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq
            parquet = pq.ParquetFile(path)
            return pa.RecordBatchReader.from_batches(parquet.schema_arrow,
                                                     parquet.iter_batches(batch_size=_BATCH_ROWS))
        if suffix in (".csv", ".tsv", ".txt", ".gz"):
            import pyarrow.csv as pacsv
            parse = pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
            # Read every column as text; the typed TRY_CAST in the engine decides and reports.
            head = pacsv.open_csv(path, parse_options=parse,
                                  read_options=pacsv.ReadOptions(block_size=1 << 20))
            names = head.schema.names
            head.close()
            convert = pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                           strings_can_be_null=True)
            return pacsv.open_csv(path, parse_options=parse, convert_options=convert,
                                  read_options=pacsv.ReadOptions(block_size=1 << 22))
    except (pa.ArrowInvalid, OSError) as err:
        raise DataLoadError(f"table '{table.name}': the file could not be read as "
                            f"{suffix.lstrip('.') or 'data'} ({type(err).__name__})") from None
    raise DataLoadError(f"table '{table.name}': unsupported file type '{suffix}' (use CSV or Parquet)")
