"""Generate a consistent set of router and domain configs with fresh secrets.

Every pair of domains gets its own 32-byte mask key (only those two hold it); the router gets
one bearer token per domain (only that domain accepts it). Owners distribute the files over
their own secure channels; the router's file never contains a pair key. Analysts are users of
the router's home (`sqlgate --home ROUTER_HOME user add ...`), as on any gateway.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Mapping, Sequence

import yaml

from server.router.config import token_digest


@dataclass(frozen=True)
class FederationFiles:
    router: dict
    domains: dict[str, dict]

    def write(self, directory: str | Path) -> dict[str, Path]:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = {"router": directory / "router.yaml"}
        paths.update({name: directory / f"domain-{name}.yaml" for name in self.domains})
        _write_private(paths["router"], self.router)
        for name, body in self.domains.items():
            _write_private(paths[name], body)
        return paths


def federation_files(domains: Mapping[str, str], *, noise_domain: str,
                     datasets: Sequence[str], max_domains_per_unit: int = 1) -> FederationFiles:
    """domains: name -> URL of that domain's federation endpoint."""
    names = sorted(domains)
    if noise_domain not in names:
        raise ValueError("the noise domain must be one of the domains")
    pair_keys = {frozenset(pair): secrets.token_hex(32) for pair in combinations(names, 2)}
    router_tokens = {name: secrets.token_urlsafe(32) for name in names}
    federation = {"parties": names, "noise_domain": noise_domain,
                  "max_domains_per_unit": max_domains_per_unit}
    router = {
        "federation": {"noise_domain": noise_domain, "max_domains_per_unit": max_domains_per_unit},
        "domains": {name: {"url": domains[name], "token": router_tokens[name]} for name in names},
    }
    domain_files = {}
    for name in names:
        domain_files[name] = {
            "name": name,
            "federation": dict(federation),
            "datasets": list(datasets),
            "peers": {"router": {"token_sha256": token_digest(router_tokens[name])}},
            "pair_keys": {peer: pair_keys[frozenset((name, peer))] for peer in names if peer != name},
        }
    return FederationFiles(router, domain_files)


def _write_private(path: Path, body: dict) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(yaml.safe_dump(body, sort_keys=False))
