"""`sqlgate` command line: demo, query, explain, datasets, budgets, serve."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from sqlgate.errors import SqlgateError

DEFAULT_HOME = "sqlgate-home"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args) or 0
    except SqlgateError as err:
        print(f"error [{err.code}]: {err.message}", file=sys.stderr)
        if err.hint:
            print(f"hint: {err.hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sqlgate", description=__doc__)
    parser.add_argument("--home", default=os.environ.get("SQLGATE_HOME", DEFAULT_HOME),
                        help="domain directory: data, ledger, users, audit (env SQLGATE_HOME)")
    sub = parser.add_subparsers(dest="command")

    demo = sub.add_parser("demo", help="build a demo domain with generated data and run DP queries")
    demo.add_argument("--patients", type=int, default=20000)
    demo.add_argument("--tpch-scale", type=float, default=0.1,
                      help="TPC-H scale factor made with tpchgen-cli (0 to skip)")
    demo.add_argument("--epsilon", type=float, default=1.0, help="epsilon per demo query")
    demo.add_argument("--fresh", action="store_true",
                      help="rebuild the demo datasets (new data version: cached answers no longer apply)")
    demo.set_defaults(handler=_demo)

    query = sub.add_parser("query", help="run one DP query against the domain")
    query.add_argument("sql")
    query.add_argument("--analyst", default=os.environ.get("SQLGATE_ANALYST", "analyst"))
    query.add_argument("--epsilon", type=float, default=None)
    query.add_argument("--json", action="store_true", help="print the result as JSON")
    query.set_defaults(handler=_query)

    explain = sub.add_parser("explain", help="cost, accuracy and rewritten SQL; spends nothing")
    explain.add_argument("sql")
    explain.add_argument("--analyst", default=os.environ.get("SQLGATE_ANALYST", "analyst"))
    explain.add_argument("--epsilon", type=float, default=None)
    explain.set_defaults(handler=_explain)

    dataset = sub.add_parser("dataset", help="add, list or drop datasets (owner)")
    dsub = dataset.add_subparsers(dest="dataset_command", required=True)
    add = dsub.add_parser("add", help="load a dataset from its metadata YAML (sources inside)")
    add.add_argument("metadata")
    add.add_argument("--replace", action="store_true")
    add.set_defaults(handler=_dataset_add)
    lst = dsub.add_parser("list")
    lst.set_defaults(handler=_dataset_list)
    drop = dsub.add_parser("drop")
    drop.add_argument("name")
    drop.set_defaults(handler=_dataset_drop)

    budget = sub.add_parser("budget", help="show or set an analyst's budget (owner)")
    bsub = budget.add_subparsers(dest="budget_command", required=True)
    show = bsub.add_parser("show")
    show.add_argument("analyst")
    show.add_argument("dataset")
    show.set_defaults(handler=_budget_show)
    set_ = bsub.add_parser("set")
    set_.add_argument("analyst")
    set_.add_argument("dataset")
    set_.add_argument("--epsilon", type=float, required=True)
    set_.add_argument("--delta", type=float, default=0.0)
    set_.set_defaults(handler=_budget_set)

    _add_server_commands(sub)
    return parser


def _add_server_commands(sub) -> None:
    """`serve`, `user`, ... come from the server package when it is installed."""
    try:
        from server import cli as server_cli
    except ImportError:
        return
    server_cli.add_commands(sub)


def _gateway(args):
    from sqlgate.gateway import Gateway
    return Gateway(Path(args.home))


def _demo(args) -> int:
    from sqlgate import demo
    from sqlgate.gateway import Gateway

    home = Path(args.home)
    print(f"sqlgate demo: building a domain in {home}/")
    with Gateway(home) as gateway:
        present = {d.name for d in gateway.datasets()}
        started = time.perf_counter()
        if "hospital" in present and not args.fresh:
            print("  dataset 'hospital' already loaded (use --fresh to rebuild)")
        else:
            demo.load_hospital(gateway, args.patients)
            print(f"  loaded dataset 'hospital' ({args.patients} generated patients and their "
                  f"visits) in {time.perf_counter() - started:.2f}s")
        if "tpch" in present and not args.fresh:
            print("  dataset 'tpch' already loaded (use --fresh to rebuild)")
        elif args.tpch_scale > 0:
            started = time.perf_counter()
            try:
                demo.load_tpch(gateway, args.tpch_scale)
                print(f"  loaded dataset 'tpch' (orders, customer at scale {args.tpch_scale}, "
                      f"made by tpchgen-cli) in {time.perf_counter() - started:.2f}s")
            except RuntimeError as err:
                print(f"  skipped TPC-H: {err}")
        names = {d.name for d in gateway.datasets()}
        for dataset, sql in demo.EXAMPLE_QUERIES:
            if dataset not in names:
                continue
            print()
            print(f"[{dataset}] {sql}")
            result = gateway.query(sql, analyst="demo-analyst", epsilon=args.epsilon)
            _print_result(result)
        status = gateway.budget("demo-analyst", "hospital")
        print()
        print(f"budget of 'demo-analyst' on 'hospital': spent epsilon={status.spent_epsilon:.3g}, "
              f"remaining epsilon={status.remaining_epsilon:.3g}")
    print()
    prefix = "sqlgate" if str(home) == DEFAULT_HOME else f"sqlgate --home {home}"
    print(f"Try: {prefix} query \"SELECT sex, COUNT(*), AVG(bmi) FROM patients GROUP BY sex\" --analyst alice")
    print(f"     {prefix} explain \"SELECT department, SUM(cost) FROM visits GROUP BY department\"")
    return 0


def _query(args) -> int:
    with _gateway(args) as gateway:
        result = gateway.query(args.sql, analyst=args.analyst, epsilon=args.epsilon)
        if args.json:
            print(json.dumps(result.to_dict(), indent=2))
        else:
            _print_result(result)
    return 0


def _explain(args) -> int:
    with _gateway(args) as gateway:
        explanation = gateway.explain(args.sql, analyst=args.analyst, epsilon=args.epsilon)
        print(json.dumps(explanation.to_dict(), indent=2))
    return 0


def _dataset_add(args) -> int:
    with _gateway(args) as gateway:
        meta = gateway.load_dataset_yaml(args.metadata, replace=args.replace)
        print(f"loaded dataset '{meta.name}' with tables {', '.join(meta.tables)}")
    return 0


def _dataset_list(args) -> int:
    with _gateway(args) as gateway:
        for meta in gateway.datasets():
            print(f"{meta.name}: {', '.join(meta.tables)}  ({meta.mechanism}, default budget "
                  f"epsilon={meta.default_budget.epsilon}, delta={meta.default_budget.delta})")
    return 0


def _dataset_drop(args) -> int:
    with _gateway(args) as gateway:
        name = gateway.dataset(args.name).name
        gateway.drop_dataset(name)
        print(f"dropped dataset '{name}'")
    _forget_server_state(Path(args.home), name)
    return 0


def _forget_server_state(home: Path, dataset: str) -> None:
    """A served domain also keeps grants and requests for the dataset: drop them too."""
    try:
        from server.auth import UserStore
        from server.dataset_drop import forget_dropped_dataset
        from server.requests import RequestStore
    except ImportError:
        return
    if not (home / "users.sqlite").exists():
        return
    denied = forget_dropped_dataset(UserStore(home / "users.sqlite"),
                                    RequestStore(home / "requests.sqlite"), dataset,
                                    os.environ.get("USER") or "cli")
    print(f"revoked every grant on '{dataset}'" + (f"; denied {denied} pending request(s)"
                                                  if denied else ""))


def _budget_show(args) -> int:
    with _gateway(args) as gateway:
        print(json.dumps(_plain(gateway.budget(args.analyst, args.dataset)), indent=2))
    return 0


def _budget_set(args) -> int:
    from sqlgate.metadata import Budget
    with _gateway(args) as gateway:
        status = gateway.set_budget(args.analyst, args.dataset,
                                    Budget(args.epsilon, args.delta), set_by="cli")
        print(json.dumps(_plain(status), indent=2))
    return 0


def _plain(value):
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "__dataclass_fields__"):
        return {k: _plain(v) for k, v in value.__dict__.items()}
    return value


def _print_result(result) -> None:
    frame = result.to_pandas()
    import pandas as pd
    with pd.option_context("display.width", 120, "display.max_columns", 20,
                           "display.float_format", "{:,.2f}".format):
        print(frame.to_string(index=False))
    cost = result.cost
    accuracy = ", ".join(f"{c.name} ±{c.ci95:,.2f}" for c in result.columns
                         if c.noisy and c.ci95 is not None)
    spent = f"epsilon={cost.epsilon:g}" + (f", delta={cost.delta:.2g}" if cost.delta else "")
    if cost.measure == "zcdp":
        spent += f" (rho={cost.rho:.3g})"
    print(f"  cost: {spent}{' (cached answer, no cost)' if result.cached else ''}; "
          f"95% CI half-width: {accuracy or 'n/a'}; keys: {result.key_release}")


if __name__ == "__main__":
    sys.exit(main())
