"""TPC-H DP benchmark: sqlgate vs raw DuckDB (and SmartNoise SQL), one command.

    python bench/tpch_bench.py [--scale 0.1|1] [--runs N] [--smartnoise] [--queries q01_...,...]

For every query of bench/tpch/queries.py, in the same process and with the same DuckDB
thread count:
  raw      the analyst's SQL on plain DuckDB over the full tables (warm-up + median of N);
           its first answer is the truth
  dp       Gateway.query end to end (parse, plan, run, charge, noise, post-process) for two
           metadata variants: query-time bounding and ingest-time truncation. Every run is a
           fresh analyst, so the answer cache never serves it: each run really computes and
           charges
  error    median relative error per cell vs the truth, at epsilon = 1
  smartnoise (with --smartnoise) the same queries through SmartNoise SQL in its own
           virtualenv (bench/smartnoise_setup.sh), twice: on DuckDB (same engine: compares
           the DP layers) and through its documented pandas reader (snsql.from_df, SQLite);
           queries it refuses are "unsupported". Timed after the others for each query (a
           run right after SmartNoise's is slowed, raw DuckDB's most), not between them

Writes bench/results/tpch-sf<scale>.json and prints a table of ratios vs raw DuckDB.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH.parent) not in sys.path:  # run as a script: make the repo importable
    sys.path.insert(0, str(BENCH.parent))

from bench.tpch import data, queries  # noqa: E402
from bench.tpch.smartnoise import SmartNoiseSession  # noqa: E402
from bench.tpch.measure import median_or_none, relative_errors, time_interleaved  # noqa: E402
from sqlgate.errors import SqlgateError  # noqa: E402

EPSILON = 1.0
VARIANTS = ("query", "ingest")
SMARTNOISE_VENV = BENCH / ".venv-smartnoise"
SMARTNOISE_ENGINES = {"smartnoise": "duckdb", "smartnoise_pandas": "pandas"}
TARGETS = {"query_ratio_max": 5.0, "ingest_ratio_max": 1.5, "speedup_vs_smartnoise_min": 30.0}


@dataclass(frozen=True)
class Options:
    scale: float = 0.1
    runs: int = 5
    smartnoise: bool = False
    query_names: tuple[str, ...] = ()
    threads: int = 0
    out: Path | None = None
    data_dir: Path = BENCH / ".data"
    smartnoise_python: Path = SMARTNOISE_VENV / "bin" / "python"


def run(options: Options) -> dict[str, Any]:
    threads = options.threads or (os.cpu_count() or 1)
    suite = queries.select(list(options.query_names))
    paths = data.generate(options.scale, options.data_dir)
    raw = data.raw_duckdb(paths, threads)
    gateways = {v: data.gateway(v, paths, threads) for v in VARIANTS}
    sessions: dict[str, SmartNoiseSession] = {}
    try:
        if options.smartnoise:
            sessions = {key: SmartNoiseSession(options.smartnoise_python,
                                               _smartnoise_job(paths, threads, engine))
                        for key, engine in SMARTNOISE_ENGINES.items()}
        live = {key: s for key, s in sessions.items() if s.available}
        results = [_measure_query(q, raw, gateways, options.runs, live) for q in suite]
    finally:
        raw.close()
        for gw in gateways.values():
            gw.close()
        for session in sessions.values():
            session.close()
    smartnoise = {key: (sessions[key].info if key in sessions else
                        {"available": False, "reason": "not requested (--smartnoise)"})
                  for key in SMARTNOISE_ENGINES}
    for key, info in smartnoise.items():
        if not info.get("available"):
            for entry in results:
                entry[key] = {"status": "unavailable",
                              "reason": info.get("reason") or info.get("error")}
    report = {
        "benchmark": "tpch-dp",
        "settings": {"scale": options.scale, "runs": options.runs, "warmup": 1,
                     "threads": threads, "epsilon": EPSILON, "variants": list(VARIANTS),
                     "data": "tpchgen-cli parquet", **_environment()},
        "smartnoise": smartnoise,
        "queries": results,
        "summary": summarize(results),
    }
    out = options.out or BENCH / "results" / f"tpch-sf{data.scale_label(options.scale)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    report["output"] = str(out)
    return report


# ---------------------------------------------------------------- one query


def _measure_query(q: queries.BenchQuery, raw, gateways, runs: int,
                   smartnoise: dict[str, SmartNoiseSession]) -> dict[str, Any]:
    runners = {"raw": lambda i: raw.execute(q.sql).fetchall()}
    explanations: dict[str, Any] = {}
    refused: dict[str, str] = {}
    for variant, gw in gateways.items():
        try:
            explanations[variant] = gw.explain(q.sql, analyst="bench-explain", epsilon=EPSILON)
        except SqlgateError as err:
            refused[variant] = f"{err.code}: {err.message}"
            continue
        runners[variant] = _dp_runner(gw, variant, q)
    prepared: dict[str, dict[str, Any]] = {}
    smartnoise_runners: dict[str, Any] = {}
    for key, session in smartnoise.items():
        # SmartNoise has no public key sets: it thresholds keys (censor_dims) exactly where
        # sqlgate does, and otherwise releases the keys it finds.
        censor = explanations.get("query") is not None and \
            explanations["query"].key_release == "threshold"
        prepared[key] = session.prepare({"name": q.name, "sql": q.sql, "censor_dims": censor})
        if prepared[key]["status"] == "ok":
            smartnoise_runners[key] = lambda i, session=session: session.run()
    # SmartNoise is timed after, not between, the others: any run right after one of its
    # runs (another process busy for 30-100 ms) is slowed, raw DuckDB's most (SF 0.1 q11:
    # 0.7 -> 1.9 ms even after a 50 ms pause), which would flatter every ratio against raw.
    measured = time_interleaved(runners, runs)
    if smartnoise_runners:
        measured.update(time_interleaved(smartnoise_runners, runs))
    raw_timing, raw_results = measured["raw"]
    truth = raw_results[0]
    entry: dict[str, Any] = {
        "name": q.name, "sql": q.sql, "features": list(q.features),
        "raw": {"median_ms": raw_timing.median_ms, "runs_ms": list(raw_timing.runs_ms),
                "cells": len(truth)},
        "dp": {},
    }
    for variant in gateways:
        if variant in refused:
            entry["dp"][variant] = {"status": "refused", "reason": refused[variant]}
            continue
        timing, answers = measured[variant]
        entry["dp"][variant] = _dp_summary(timing, answers, explanations[variant], truth,
                                           raw_timing.median_ms)
    entry["truth"] = [[_jsonable(v) for v in row] for row in truth]
    for key, ready in prepared.items():
        replies = measured[key][1] if key in measured else []
        entry[key] = _smartnoise_summary(entry, ready, replies)
    return entry


def _dp_runner(gw, variant: str, q: queries.BenchQuery):
    def once(i: int):
        # A fresh analyst per run: the answer cache (per analyst) never short-cuts it, so
        # every run plans, runs, charges and draws noise.
        return gw.query(q.sql, analyst=f"bench-{variant}-{q.name}-{i}", epsilon=EPSILON)
    return once


def _dp_summary(timing, answers, explanation, truth, raw_ms: float) -> dict[str, Any]:
    if any(a.cached for a in answers):
        raise RuntimeError("a cached answer was timed; the benchmark would be meaningless")
    keys = [i for i, c in enumerate(answers[0].columns) if not c.noisy]
    errors = [e for a in answers for e in relative_errors(truth, a.rows, keys)]
    return {
        "status": "ok", "median_ms": timing.median_ms, "runs_ms": list(timing.runs_ms),
        "ratio_vs_raw": timing.median_ms / raw_ms if raw_ms > 0 else None,
        "rel_error_median": median_or_none(errors),
        "rel_error_mean": statistics.fmean(errors) if errors else None,
        "key_positions": keys, "key_release": explanation.key_release,
        "direct_path": any("bounded at ingest" in n or "bounded at query time" in n
                           for n in explanation.notes),
        "cost": {"epsilon": answers[0].cost.epsilon, "delta": answers[0].cost.delta},
        "cells": [len(a.rows) for a in answers],
        "example": [[_jsonable(v) for v in row] for row in answers[0].rows[:30]],
    }


def _jsonable(value):
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if value is not None and not isinstance(value, (int, float, str, bool)):
        return float(value) if hasattr(value, "__float__") else str(value)
    return value


# ---------------------------------------------------------------- SmartNoise


def smartnoise_metadata(variant: str = "query") -> dict[str, Any]:
    """The SmartNoise SQL metadata equivalent to ours (tables with a unit column only:
    SmartNoise has no FK-path units and no public tables)."""
    meta = data.metadata(variant)
    tables: dict[str, Any] = {}
    for name, table in meta.tables.items():
        if not table.privacy_unit:
            continue
        spec: dict[str, Any] = {
            "max_ids": table.max_groups_per_unit * table.max_rows_per_group,
            "sample_max_ids": True, "row_privacy": False, "clamp_counts": False,
            "clamp_columns": True, "censor_dims": True}
        for cname, col in table.columns.items():
            if cname == table.privacy_unit:
                spec[cname] = {"type": "int", "private_id": True}
            elif col.type in ("int", "float"):
                spec[cname] = {"type": col.type}
                if col.has_bounds:
                    spec[cname].update(lower=col.lower, upper=col.upper)
            elif col.type == "date":
                spec[cname] = {"type": "datetime"}
            elif col.type == "bool":
                spec[cname] = {"type": "boolean"}
            else:
                spec[cname] = {"type": "string"}
            spec[cname]["nullable"] = col.nullable
        tables[name] = spec
    return {"tpch": {"tpch": tables}}


def _smartnoise_job(paths, threads: int, engine: str) -> dict[str, Any]:
    sn_meta = smartnoise_metadata()
    meta = data.metadata("query")
    types = {"int": "BIGINT", "float": "DOUBLE", "string": "VARCHAR", "date": "DATE",
             "bool": "BOOLEAN"}
    tables = {name: {c: types[col.type] for c, col in meta.tables[name].columns.items()}
              for name in sn_meta["tpch"]["tpch"]}
    return {"engine": engine, "collection": "tpch", "schema": "tpch", "tables": tables,
            "all_tables": list(data.TABLES), "paths": {t: str(paths[t]) for t in tables},
            "metadata": sn_meta, "threads": threads, "epsilon": EPSILON,
            "delta": meta.query_delta}


def _smartnoise_summary(entry: dict[str, Any], prepared: dict[str, Any],
                        replies: list[dict[str, Any]]) -> dict[str, Any]:
    if prepared["status"] != "ok":
        return {"status": "unsupported", "reason": prepared.get("reason")}
    failed = [r for r in replies if r.get("status") != "ok"]
    if failed or not replies:
        return {"status": "unsupported",
                "reason": failed[0].get("reason") if failed else "no run completed"}
    # Latency as SmartNoise measured it in its process (no pipe overhead).
    times = [r["ms"] for r in replies]
    median_ms = statistics.median(times)
    keys = entry["dp"]["query"].get("key_positions", [])
    errors = [e for r in replies for e in relative_errors(entry["truth"], r["rows"], keys)]
    raw_ms = entry["raw"]["median_ms"]
    summary = {"status": "ok", "median_ms": median_ms, "runs_ms": [round(t, 3) for t in times],
               "ratio_vs_raw": median_ms / raw_ms if raw_ms > 0 else None,
               "rel_error_median": median_or_none(errors),
               "rel_error_mean": statistics.fmean(errors) if errors else None,
               "privacy_cost": prepared["privacy_cost"], "sql": prepared["sql"],
               "cells": [len(r["rows"]) for r in replies]}
    for variant in VARIANTS:
        dp = entry["dp"][variant]
        if dp.get("status") == "ok":
            summary[f"speedup_{variant}"] = median_ms / dp["median_ms"]
    return summary


# ---------------------------------------------------------------- summary and table


def summarize(results) -> dict[str, Any]:
    summary: dict[str, Any] = {"queries": len(results)}
    for variant in VARIANTS:
        ok = [r["dp"][variant] for r in results if r["dp"][variant].get("status") == "ok"]
        summary[variant] = {
            "median_ratio_vs_raw": median_or_none([d["ratio_vs_raw"] for d in ok]),
            "median_rel_error": median_or_none([d["rel_error_median"] for d in ok]),
            "refused": [r["name"] for r in results if r["dp"][variant].get("status") != "ok"],
        }
    for key in SMARTNOISE_ENGINES:
        sn_ok = [r for r in results if r.get(key, {}).get("status") == "ok"]
        if not sn_ok:
            continue
        summary[key] = {
            "supported": [r["name"] for r in sn_ok],
            "median_ratio_vs_raw": median_or_none([r[key]["ratio_vs_raw"] for r in sn_ok]),
            "median_rel_error": median_or_none([r[key]["rel_error_median"] for r in sn_ok]),
            # The same queries, so the errors and speed-ups compare like with like.
            "sqlgate_query_median_rel_error_same_queries": median_or_none(
                [r["dp"]["query"]["rel_error_median"] for r in sn_ok]),
            "sqlgate_ingest_median_rel_error_same_queries": median_or_none(
                [r["dp"]["ingest"]["rel_error_median"] for r in sn_ok]),
            "median_speedup_query": median_or_none([r[key].get("speedup_query") for r in sn_ok]),
            "median_speedup_ingest": median_or_none([r[key].get("speedup_ingest") for r in sn_ok]),
        }
    summary["targets"] = _targets(summary)
    return summary


def _targets(summary) -> dict[str, Any]:
    def check(value, limit, higher_is_better=False):
        if value is None:
            return {"value": None, "target": limit, "met": None}
        met = value >= limit if higher_is_better else value <= limit
        return {"value": round(value, 3), "target": limit, "met": met}

    targets = {
        "query_time_bounding_ratio_le_5": check(summary["query"]["median_ratio_vs_raw"],
                                                TARGETS["query_ratio_max"]),
        "ingest_time_bounding_ratio_le_1.5": check(summary["ingest"]["median_ratio_vs_raw"],
                                                   TARGETS["ingest_ratio_max"]),
    }
    for key, engine in SMARTNOISE_ENGINES.items():
        sn = summary.get(key)
        if not sn:
            continue
        targets[f"speedup_vs_{key}_ge_30"] = check(sn["median_speedup_query"],
                                                  TARGETS["speedup_vs_smartnoise_min"], True)
        for variant in VARIANTS:
            ours = sn[f"sqlgate_{variant}_median_rel_error_same_queries"]
            theirs = sn["median_rel_error"]
            targets[f"error_{variant}_no_worse_than_{key}"] = {
                "value": ours, "smartnoise": theirs,
                "met": None if ours is None or theirs is None else ours <= theirs}
    return targets


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(report: dict[str, Any]) -> str:
    lines = []
    head = (f"{'query':28s} {'raw ms':>8s} {'dp/raw':>7s} {'err':>7s} {'ingest/raw':>10s} "
            f"{'err':>7s} {'SN/raw':>7s} {'SN err':>7s} {'SN/dp':>6s} {'SNpd/dp':>8s}")
    lines += [head, "-" * len(head)]
    for r in report["queries"]:
        q, i = r["dp"]["query"], r["dp"]["ingest"]
        sn = r.get("smartnoise", {})
        sn_cols = (f"{_fmt(sn.get('ratio_vs_raw'), '7.1f')} {_fmt(sn.get('rel_error_median'), '7.4f')} "
                   f"{_fmt(sn.get('speedup_query'), '6.1f')}" if sn.get("status") == "ok"
                   else f"{sn.get('status', '-'):>22s}")
        pandas = r.get("smartnoise_pandas", {})
        sn_cols += f" {_fmt(pandas.get('speedup_query'), '8.1f')}"
        lines.append(
            f"{r['name']:28s} {r['raw']['median_ms']:8.2f} {_fmt(q.get('ratio_vs_raw'), '7.2f')} "
            f"{_fmt(q.get('rel_error_median'), '7.4f')} {_fmt(i.get('ratio_vs_raw'), '10.2f')} "
            f"{_fmt(i.get('rel_error_median'), '7.4f')} {sn_cols}")
    s = report["summary"]
    lines.append("-" * len(head))
    lines.append(f"median DP/raw: query-time bounding {_fmt(s['query']['median_ratio_vs_raw'], '.2f')}x, "
                 f"ingest-time bounding {_fmt(s['ingest']['median_ratio_vs_raw'], '.2f')}x; "
                 f"median rel. error {_fmt(s['query']['median_rel_error'], '.4f')} / "
                 f"{_fmt(s['ingest']['median_rel_error'], '.4f')}")
    for key, engine in SMARTNOISE_ENGINES.items():
        sn = s.get(key)
        if sn:
            lines.append(
                f"SmartNoise on {engine} ({len(sn['supported'])} supported queries): median "
                f"SN/raw {_fmt(sn['median_ratio_vs_raw'], '.1f')}x, sqlgate speed-up "
                f"{_fmt(sn['median_speedup_query'], '.1f')}x (query-time) / "
                f"{_fmt(sn['median_speedup_ingest'], '.1f')}x (ingest); median rel. error SN "
                f"{_fmt(sn['median_rel_error'], '.4f')} vs sqlgate "
                f"{_fmt(sn['sqlgate_query_median_rel_error_same_queries'], '.4f')} / "
                f"{_fmt(sn['sqlgate_ingest_median_rel_error_same_queries'], '.4f')}")
        else:
            info = report["smartnoise"][key]
            lines.append(f"SmartNoise on {engine}: "
                         f"{info.get('reason') or info.get('error') or 'no supported query'}")
    for name, t in s["targets"].items():
        lines.append(f"target {name}: value {t['value']} -> "
                     f"{'met' if t['met'] else ('not met' if t['met'] is False else 'n/a')}")
    return "\n".join(lines)


def _environment() -> dict[str, Any]:
    import duckdb
    import sqlglot
    from importlib.metadata import version
    return {"python": platform.python_version(), "duckdb": duckdb.__version__,
            "sqlglot": sqlglot.__version__, "opendp": version("opendp"),
            "cpu_count": os.cpu_count(), "machine": platform.machine()}


def parse_args(argv=None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.1, help="TPC-H scale factor (0.1 or 1)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per query (after 1 warm-up)")
    parser.add_argument("--smartnoise", action="store_true",
                        help="also run SmartNoise SQL (bench/smartnoise_setup.sh makes its venv)")
    parser.add_argument("--queries", default="", help="comma-separated query names (default: all)")
    parser.add_argument("--threads", type=int, default=0, help="DuckDB threads (default: all cores)")
    parser.add_argument("--out", type=Path, default=None, help="JSON output path")
    parser.add_argument("--data-dir", type=Path, default=BENCH / ".data",
                        help="where generated TPC-H Parquet is cached")
    args = parser.parse_args(argv)
    if args.scale <= 0 or args.runs < 1:
        parser.error("--scale must be > 0 and --runs >= 1")
    names = tuple(n.strip() for n in args.queries.split(",") if n.strip())
    return Options(scale=args.scale, runs=args.runs, smartnoise=args.smartnoise,
                   query_names=names, threads=args.threads, out=args.out, data_dir=args.data_dir)


def main(argv=None) -> int:
    options = parse_args(argv)
    try:
        report = run(options)
    except (ValueError, RuntimeError) as err:  # unknown query names, tpchgen-cli missing
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table(report))
    print(f"\nwrote {report['output']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
