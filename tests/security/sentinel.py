"""A small domain with planted secrets, and checks that no error or answer ever carries them.

The dataset `hr` has three tables: `people` (unit `pid`), `visits` (unit `pid`, several rows
and groups per unit) and the public table `regions` (with a duplicated key, so joins to it
fan out). Person 7 is the target: name ZZSECRET42, salary and income 987654.321, and a visit
in department ZZSECRET42 costing 987654.321. A second, never-queried person (ZZHIDDEN77,
123456.789) is checked for in every error too, so even an attack whose own text names the
first secret is still checked against data it never mentioned.
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sqlgate.metadata import DatasetMeta, parse_dataset

SECRET_NAME = "ZZSECRET42"
SECRET_NUMBER = 987654.321
HIDDEN_NAME = "ZZHIDDEN77"
HIDDEN_NUMBER = 123456.789
# Substrings any rendering of the planted values would contain (repr, str, %g, scaled ints).
_NEEDLES = ("ZZSECRET42", "zzsecret42", "987654", "9.87654", "ZZHIDDEN77", "zzhidden77",
            "123456.7", "1.234567")

PEOPLE = 300


def hr_metadata(name: str = "hr", *, epsilon: float = 1000.0, delta: float = 1e-3) -> DatasetMeta:
    return parse_dataset({
        "dataset": name, "budget": {"epsilon": epsilon, "delta": delta},
        "query": {"epsilon": 1.0, "delta": 1e-7},
        "tables": {
            "people": {"privacy_unit": "pid", "columns": {
                "pid": "int", "name": "string",
                "salary": {"type": "float", "lower": 0, "upper": 10000},
                "age": {"type": "int", "lower": 0, "upper": 100, "nullable": False},
                "income": "float",  # no bounds: may be counted, never summed
                "region": {"type": "string", "public_keys": ["n", "s"]},
                "born": "date"}},
            "visits": {"privacy_unit": "pid", "max_groups_per_unit": 2, "max_rows_per_group": 2,
                       "columns": {"vid": "int", "pid": "int", "dept": "string",
                                   "cost": {"type": "float", "lower": 0, "upper": 100}}},
            "regions": {"public": True, "columns": {"region": "string", "label": "string"}},
        }})


def hr_frames(extra_unit: bool = False) -> dict[str, pd.DataFrame]:
    """The tables; `extra_unit` adds one adversarial person (pid 100000) for neighbour tests:
    many rows, many groups, values far outside every bound (and non-finite floats)."""
    rng = np.random.default_rng(1)
    n = PEOPLE
    people = pd.DataFrame({
        "pid": np.arange(n), "name": [f"p{i}" for i in range(n)],
        "salary": rng.integers(1000, 5000, n).astype(float), "age": rng.integers(18, 90, n),
        "income": rng.normal(5e4, 1e4, n), "region": rng.choice(["n", "s"], n),
        "born": pd.Timestamp("1980-01-01").date()})
    people.loc[7, ["name", "salary", "income"]] = [SECRET_NAME, SECRET_NUMBER, SECRET_NUMBER]
    people.loc[8, ["name", "salary", "income"]] = [HIDDEN_NAME, HIDDEN_NUMBER, HIDDEN_NUMBER]
    visits = pd.DataFrame({
        "vid": np.arange(3 * n), "pid": np.repeat(np.arange(n), 3),
        "dept": rng.choice(["a", "b", "c"], 3 * n), "cost": rng.uniform(0, 100, 3 * n)})
    visits.loc[21, ["dept", "cost"]] = [SECRET_NAME, SECRET_NUMBER]
    visits.loc[24, ["dept", "cost"]] = [HIDDEN_NAME, HIDDEN_NUMBER]
    regions = pd.DataFrame({"region": ["n", "s", "n"], "label": ["North", "South", "Nord"]})
    if extra_unit:
        adversary = 100_000
        people = pd.concat([people, pd.DataFrame({
            "pid": [adversary] * 6, "name": [f"adv{i}" for i in range(6)],
            "salary": [1e9] * 6, "age": [100] * 6, "income": [1e9] * 6,
            "region": ["n", "s"] * 3, "born": [pd.Timestamp("1990-01-01").date()] * 6})],
            ignore_index=True)
        visits = pd.concat([visits, pd.DataFrame({
            "vid": np.arange(10**6, 10**6 + 60), "pid": [adversary] * 60,
            "dept": [f"d{i % 20}" for i in range(60)],
            "cost": [1e9, float("inf"), float("-inf"), float("nan")] * 15})], ignore_index=True)
    return {"people": people, "visits": visits, "regions": regions}


def build_gateway(home: Path | None = None, **gateway_options):
    from sqlgate.gateway import Gateway
    gw = Gateway(home, **gateway_options)
    gw.add_dataset(hr_metadata(), hr_frames())
    return gw


def leaked_needles(text: str) -> list[str]:
    return [needle for needle in _NEEDLES if needle in text]


@dataclass(frozen=True)
class ErrorSurface:
    """Everything a front end could show or log about an error."""

    texts: tuple[str, ...]

    @classmethod
    def of(cls, err: BaseException) -> "ErrorSurface":
        texts = [str(err), repr(err), "".join(traceback.format_exception(err))]
        for attr in ("message", "hint"):
            value = getattr(err, attr, None)
            if value:
                texts.append(str(value))
        details = getattr(err, "details", None)
        if details:
            texts.append(repr(details))
        if hasattr(err, "to_dict"):
            texts.append(repr(err.to_dict()))
        # A suppressed engine error (raise ... from None) is still attached as __context__;
        # a front end that logs it with its context would show it.
        context = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
        if context is not None:
            texts.append(str(context))
        return cls(tuple(texts))


def assert_error_is_clean(err: BaseException, sql: str = "") -> None:
    """No planted value in any rendering of `err`, except values the query itself spelled out
    (an error may quote the analyst's own text)."""
    for text in ErrorSurface.of(err).texts:
        leaked = [n for n in leaked_needles(text) if n not in sql]
        assert not leaked, f"error exposes planted value(s) {leaked}: {text[:300]}"


def assert_rows_are_clean(rows) -> None:
    """An answer may hold noisy numbers and released keys, never a planted value exactly."""
    for row in rows:
        for value in row:
            if isinstance(value, str):
                assert not leaked_needles(value), f"answer releases a planted key: {value}"
            elif isinstance(value, float):
                assert value not in (SECRET_NUMBER, HIDDEN_NUMBER), "answer releases a planted value"
