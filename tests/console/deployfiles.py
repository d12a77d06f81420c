"""Loading the deployment files (Dockerfile, compose, k8s) and the facts tests check them
against: the documented environment variables and what the code reads."""
from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
SOURCE_DIRS = ("sqlgate", "server", "accountant", "rewriter", "torch_bridge")


# ---------------------------------------------------------------- Dockerfile


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


def dockerfile_instructions(path: Path = REPO / "Dockerfile") -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    out, buffer, start = [], "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        buffer += stripped
        keyword, _, args = buffer.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        buffer = ""
    assert not buffer, "the Dockerfile ends inside a continuation line"
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    out: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            out.append([])
        assert out, f"line {ins.line}: {ins.keyword} before FROM"
        out[-1].append(ins)
    return out


def env_pairs(args: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in shlex.split(args))


# ---------------------------------------------------------------- YAML


def load_compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def kustomize_resources() -> list[dict]:
    """The documents `kubectl apply -k deploy/k8s` would send (no patches are used)."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc:
                doc.setdefault("metadata", {}).setdefault("namespace", kustomization["namespace"])
                docs.append(doc)
    return docs


def example_secrets() -> dict[str, dict[str, str]]:
    return {doc["metadata"]["name"]: doc["stringData"]
            for doc in yaml.safe_load_all((K8S / "secrets.example.yaml").read_text()) if doc}


# ---------------------------------------------------------------- environment


def documented_env() -> dict[str, str]:
    """`| \\`NAME\\` | default | used by | meaning |` rows of deploy/README.md."""
    rows = re.findall(r"^\| `(SQLGATE_[A-Z0-9_]+)` \| ([^|]*) \| ([^|]*) \|",
                      (DEPLOY / "README.md").read_text(), re.M)
    return {name: used_by.strip() for name, _default, used_by in rows}


def env_read_by_code() -> set[str]:
    """SQLGATE_* names that appear as string literals in the installed packages' sources."""
    names = set()
    for directory in SOURCE_DIRS:
        for path in (REPO / directory).rglob("*.py"):
            names |= set(re.findall(r"[\"'](SQLGATE_[A-Z0-9_]+)[\"']", path.read_text()))
    return names


def env_references(config_text: str) -> set[str]:
    """Names a router/domain config reads through "env:NAME" secret values."""
    found: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str) and node.startswith("env:"):
            found.add(node[4:])

    walk(yaml.safe_load(config_text))
    return found


# ---------------------------------------------------------------- commands


def cli_parser(entrypoint: list[str]) -> argparse.ArgumentParser:
    """The argparse parser behind an image entrypoint, to check manifest commands exist."""
    if entrypoint == ["sqlgate"]:
        from sqlgate.cli import _parser
        return _parser()
    if entrypoint == ["python", "-m", "server.router"]:
        # The same parser server.router.cli.main builds.
        from server.router.cli import add_commands
        parser = argparse.ArgumentParser(prog="python -m server.router")
        parser.add_argument("--home")
        add_commands(parser.add_subparsers(dest="command", required=True))
        return parser
    raise AssertionError(f"unknown entrypoint {entrypoint}")


def parse_command(entrypoint: list[str], args: list[str]) -> argparse.Namespace:
    parser = cli_parser(entrypoint)
    parser.exit = _raise   # argparse would sys.exit on errors
    parser.error = _raise
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        for sub in action.choices.values():
            sub.exit, sub.error = _raise, _raise
    return parser.parse_args(args)


def _raise(*args, **kwargs):
    raise AssertionError(f"invalid command line: {args} {kwargs}")
