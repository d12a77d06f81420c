"""`sqlgate.connect(url, token)`: the analyst's Python client over the /v1 HTTP API.

    import sqlgate
    client = sqlgate.connect("http://127.0.0.1:8765", token="sqg_...")
    patients = client.table("patients")
    patients[patients.age >= 18].groupby("region").agg(mean_bmi=("bmi", "mean")).to_pandas()

Every answer is a pandas DataFrame whose `attrs["sqlgate"]` holds the query id, the privacy
cost, whether it was a free repeat, and the 95% CI half-width of each noisy column.
"""
from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from sqlgate.client.errors import ResultGone
from sqlgate.client.frame import LazyFrame, TableInfo
from sqlgate.client.transport import DEFAULT_TIMEOUT_S, Credentials, Transport
from sqlgate.errors import InvalidParameter, UndefinedTable

REQUEST_KINDS = ("exact", "sample", "training")
FINAL_REQUEST_STATES = ("done", "denied", "failed", "fetched")


def connect(url: str, token: str | None = None, user: str | None = None,
            password: str | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S,
            verify: Any = True) -> "Client":
    """A client for the sqlgate server at `url`, authenticated by a bearer token or by
    user and password (HTTP basic; use https outside a test bench)."""
    return Client(Transport(url, Credentials(token=token, user=user, password=password),
                            timeout_s=timeout_s, verify=verify))


@dataclass(frozen=True)
class Explanation:
    """What a query would cost and how accurate it would be; nothing was run or spent."""

    dataset: str
    cost: dict
    columns: list[dict]
    rewritten_sql: str
    mechanism: str
    key_release: str
    budget: dict | None = None
    threshold: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ci95(self) -> dict[str, float | None]:
        return {c["name"]: c.get("ci95") for c in self.columns if c.get("noisy")}

    def __str__(self) -> str:
        lines = [f"dataset {self.dataset}: cost epsilon={self.cost.get('epsilon')} "
                 f"delta={self.cost.get('delta')} ({self.mechanism}, keys {self.key_release})"]
        for c in self.columns:
            accuracy = (f"95% CI ±{c['ci95']:.4g}" if c.get("noisy") and c.get("ci95")
                        is not None else "noisy" if c.get("noisy") else "exact (public)")
            lines.append(f"  {c['name']}: {accuracy}")
        if self.budget:
            lines.append(f"  remaining budget: epsilon={self.budget.get('remaining_epsilon')}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


class Client:
    def __init__(self, transport: Transport):
        self._http = transport
        self._tables: dict[str, TableInfo] = {}

    @property
    def url(self) -> str:
        return self._http.url

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ catalog

    def datasets(self) -> list[dict]:
        """The datasets you may query: name, description, mechanism, tables."""
        return self._http.json("GET", "/v1/datasets")["datasets"]

    def dataset(self, name: str) -> dict:
        """A dataset's public metadata (tables, columns, bounds, key sets, budgets)."""
        return self._http.json("GET", f"/v1/datasets/{_segment(name)}")

    def tables(self) -> list[str]:
        """Every table you may query, as `dataset.table`."""
        return sorted(f"{d['name']}.{t}" for d in self.datasets() for t in d["tables"])

    def table(self, name: str) -> LazyFrame:
        """A lazy frame over `table` (unique across your datasets) or `dataset.table`."""
        return LazyFrame(self, self._table_info(name))

    def mock(self, table: str, rows: int = 100, seed: int = 0) -> pd.DataFrame:
        """Fake rows generated from the table's metadata only (no private data), to try
        code on."""
        info = self._table_info(table)
        body = self._http.json("GET", f"/v1/datasets/{_segment(info.dataset)}/tables/"
                                      f"{_segment(info.table)}/mock",
                               params={"rows": rows, "seed": seed})
        frame = _frame([c["name"] for c in body["columns"]],
                       [c["type"] for c in body["columns"]], body["rows"])
        frame.attrs["sqlgate"] = {"mock": True, "dataset": info.dataset, "table": info.table}
        return frame

    # ------------------------------------------------------------ queries

    def sql(self, sql: str, epsilon: float | None = None) -> pd.DataFrame:
        """Run one DP query (charges the budget unless it repeats an earlier one)."""
        body = self._http.json("POST", "/v1/query", body=_query_body(sql, epsilon))
        return result_frame(body)

    def explain(self, sql: str, epsilon: float | None = None) -> Explanation:
        """Cost, accuracy and the rewritten SQL of a query; runs nothing, spends nothing."""
        body = self._http.json("POST", "/v1/explain", body=_query_body(sql, epsilon))
        return Explanation(dataset=body["dataset"], cost=body["cost"], columns=body["columns"],
                           rewritten_sql=body["rewritten_sql"], mechanism=body["mechanism"],
                           key_release=body["key_release"], budget=body.get("budget"),
                           threshold=body.get("threshold"), notes=body.get("notes") or [])

    def budget(self, dataset: str | None = None):
        """Your budget on `dataset` as a dict, or on every dataset as a DataFrame."""
        budgets = self._http.json("GET", "/v1/budgets")["budgets"]
        if dataset is None:
            rows = [{"dataset": b["dataset"], "total_epsilon": b["total"]["epsilon"],
                     "total_delta": b["total"]["delta"], "spent_epsilon": b["spent_epsilon"],
                     "spent_delta": b["spent_delta"], "remaining_epsilon": b["remaining_epsilon"],
                     "remaining_delta": b["remaining_delta"], "queries": b["queries"],
                     "measure": b["measure"]} for b in budgets]
            return pd.DataFrame(rows, columns=["dataset", "total_epsilon", "total_delta",
                                               "spent_epsilon", "spent_delta",
                                               "remaining_epsilon", "remaining_delta",
                                               "queries", "measure"])
        for b in budgets:
            if b["dataset"].lower() == str(dataset).lower():
                return b
        raise UndefinedTable(f"dataset '{dataset}' does not exist")

    # ------------------------------------------------------------ approvals

    def request(self, kind: str, sql: str, purpose: str, *, dataset: str | None = None,
                spec: dict | None = None) -> "Request":
        """Ask the data owner to approve something DP cannot answer (exact numbers, a row
        sample, a training job). The dataset is taken from the SQL when not given."""
        if kind not in REQUEST_KINDS:
            raise InvalidParameter(f"kind must be one of {', '.join(REQUEST_KINDS)}")
        dataset = dataset or self._dataset_of(sql)
        body = {"dataset": dataset, "kind": kind, "sql": sql, "purpose": purpose}
        if spec is not None:
            body["spec"] = spec
        return Request(self._http, self._http.json("POST", "/v1/requests", body=body))

    def requests(self, status: str | None = None) -> list["Request"]:
        params = {"status": status} if status else None
        found = self._http.json("GET", "/v1/requests", params=params)["requests"]
        return [Request(self._http, r) for r in found]

    def get_request(self, request_id: str) -> "Request":
        return Request(self._http, self._http.json("GET", f"/v1/requests/{_segment(request_id)}"))

    # ------------------------------------------------------------ internals

    def _table_info(self, name: str) -> TableInfo:
        if not isinstance(name, str) or not name.strip():
            raise InvalidParameter("table names are strings like 'patients' or "
                                   "'hospital.patients'")
        key = name.strip().lower()
        if key in self._tables:
            return self._tables[key]
        dataset, _, table = key.rpartition(".")
        candidates = [(d["name"], t) for d in self.datasets() for t in d["tables"]
                      if t.lower() == table and (not dataset or d["name"].lower() == dataset)]
        if not candidates:
            raise UndefinedTable(f"table '{name}' does not exist")
        if len(candidates) > 1:
            names = ", ".join(sorted(f"{d}.{t}" for d, t in candidates))
            raise UndefinedTable(f"table name '{name}' is ambiguous; qualify it: {names}")
        dataset_name, table_name = candidates[0]
        spec = self.dataset(dataset_name)["tables"][table_name]
        info = TableInfo(dataset_name, table_name, spec["columns"], spec.get("privacy_unit"))
        self._tables[key] = info
        return info

    def _dataset_of(self, sql: str) -> str:
        try:
            tree = sqlglot.parse_one(sql, read="postgres")
        except (ParseError, TokenError):
            raise InvalidParameter("could not read the SQL to find its dataset; pass "
                                   "dataset=...") from None
        ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
        found = set()
        for node in tree.find_all(exp.Table):
            if node.db:
                found.add(node.db)
            elif node.name.lower() not in ctes:
                found.add(self._table_info(node.name).dataset)
        if len(found) != 1:
            raise InvalidParameter("pass dataset=...: the SQL does not name exactly one dataset")
        return found.pop()


class Request:
    """An approval request. `status()` refreshes, `wait()` blocks until the owner decided
    and it ran, `result()` fetches the approved result (the server releases it once; this
    object keeps it)."""

    def __init__(self, transport: Transport, info: dict):
        self._http = transport
        self.info = info
        self._result: pd.DataFrame | None = None

    @property
    def id(self) -> str:
        return self.info["id"]

    def refresh(self) -> dict:
        self.info = self._http.json("GET", f"/v1/requests/{_segment(self.id)}")
        return self.info

    def status(self) -> str:
        return self.refresh()["status"]

    def wait(self, timeout_s: float = 300.0, poll_s: float = 0.5) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.status()
            if status in FINAL_REQUEST_STATES:
                return status
            if time.monotonic() >= deadline:
                raise TimeoutError(f"request {self.id} is still {status} after {timeout_s}s")
            time.sleep(poll_s)

    def result(self) -> pd.DataFrame:
        if self._result is not None:
            return self._result
        body = self._http.json("GET", f"/v1/requests/{_segment(self.id)}/result")
        frame = _frame(body["columns"], body.get("types") or [None] * len(body["columns"]),
                       body["rows"])
        frame.attrs["sqlgate"] = {"request_id": self.id, "kind": self.info.get("kind"),
                                  "exact": True, "truncated": body.get("truncated", False)}
        self._result = frame
        return frame

    # Owners review requests on their datasets through the same object.
    def approve(self, reason: str) -> dict:
        self.info = self._http.json("POST", f"/v1/requests/{_segment(self.id)}/approve",
                                    body={"reason": reason})
        return self.info

    def deny(self, reason: str) -> dict:
        self.info = self._http.json("POST", f"/v1/requests/{_segment(self.id)}/deny",
                                    body={"reason": reason})
        return self.info

    def mock_run(self, rows: int = 100) -> pd.DataFrame:
        body = self._http.json("POST", f"/v1/requests/{_segment(self.id)}/mock-run",
                               body={"rows": rows})
        frame = _frame(body["columns"], body.get("types") or [None] * len(body["columns"]),
                       body["rows"])
        frame.attrs["sqlgate"] = {"request_id": self.id, "mock": True}
        return frame

    def __repr__(self) -> str:
        return f"<sqlgate request {self.id} {self.info.get('kind')} {self.info.get('status')}>"


__all__ = ["Client", "Explanation", "Request", "ResultGone", "connect"]


def result_frame(body: dict) -> pd.DataFrame:
    """A /v1/query JSON answer as a DataFrame with its noise metadata in attrs."""
    columns = body["columns"]
    frame = _frame([c["name"] for c in columns], [c["type"] for c in columns], body["rows"])
    frame.attrs["sqlgate"] = {
        "query_id": body["query_id"], "dataset": body["dataset"], "cost": body["cost"],
        "cached": body["cached"], "mechanism": body.get("mechanism"),
        "key_release": body.get("key_release"),
        "ci95": {c["name"]: c.get("ci95") for c in columns if c.get("noisy")},
        "noisy": [c["name"] for c in columns if c.get("noisy")],
    }
    return frame


def _frame(names: list[str], types: list[str | None], rows: list[list]) -> pd.DataFrame:
    converted = [[from_json_value(v, t) for v, t in zip(row, types)] for row in rows]
    return pd.DataFrame.from_records(converted, columns=names)


def from_json_value(value: Any, type_name: str | None) -> Any:
    """A JSON value of a sqlgate column type as Python (dates as date objects)."""
    if value is not None and type_name == "date" and isinstance(value, str):
        try:
            # Dates come as YYYY-MM-DD; exact results may hold timestamps under the same type.
            return dt.date.fromisoformat(value) if len(value) == 10 else \
                dt.datetime.fromisoformat(value)
        except ValueError:
            return value
    return value


def _query_body(sql: str, epsilon: float | None) -> dict:
    if not isinstance(sql, str) or not sql.strip():
        raise InvalidParameter("the query must be a non-empty string")
    body: dict[str, Any] = {"sql": sql}
    if epsilon is not None:
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)):
            raise InvalidParameter("epsilon must be a positive number")
        body["epsilon"] = float(epsilon)
    return body


def _segment(value: str) -> str:
    """A URL path segment; names are identifiers, but never let one add path parts."""
    from urllib.parse import quote
    return quote(str(value), safe="")
