"""Three domains (in-process Gateways behind their federation endpoint) and a router, on
127.0.0.1 free ports. The clinic dataset is horizontally partitioned: disjoint patients."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest

from server.router.bootstrap import FederationFiles, federation_files
from server.router.config import parse_domain_config, parse_router_config
from server.router.domain import DomainService
from server.router.http import domain_app
from server.router.router import Router
from sqlgate.gateway import Gateway
from sqlgate.metadata import parse_dataset
from tests.router.servers import BackgroundServer, free_port

DOMAINS = ("a", "b", "c")
NOISE_DOMAIN = "b"
WARDS = ["cardio", "neuro", "onco", "ortho"]


def clinic_metadata(**overrides):
    table = {
        "privacy_unit": "pid",
        "max_groups_per_unit": 1,
        "max_rows_per_group": 2,
        "columns": {
            "pid": {"type": "int"},
            "age": {"type": "int", "lower": 0, "upper": 100, "nullable": False},
            "los": {"type": "float", "lower": 0.0, "upper": 30.0, "nullable": False},
            "ward": {"type": "string", "public_keys": WARDS},
            "sex": {"type": "string", "public_keys": ["F", "M"]},
            "city": {"type": "string"},
            "note": {"type": "string"},
        },
    }
    table.update(overrides)
    return parse_dataset({
        "dataset": "clinic",
        "budget": {"epsilon": 1000.0, "delta": 1e-5},
        "query": {"epsilon": 1.0, "delta": 1e-7, "mechanism": "laplace"},
        "tables": {"visits": table},
    })


def clinic_frame(n_patients: int, first_pid: int, seed: int) -> pd.DataFrame:
    """Visits: most patients 1 row, some 2-3 rows (above max_rows_per_group: bounded)."""
    rng = np.random.default_rng(seed)
    visits = rng.choice([1, 1, 1, 2, 3], n_patients)
    pid = np.repeat(np.arange(first_pid, first_pid + n_patients), visits)
    n = len(pid)
    ward_of_patient = rng.choice(WARDS, n_patients)
    return pd.DataFrame({
        "pid": pid,
        "age": rng.integers(0, 95, n),
        "los": rng.uniform(0, 40, n).round(2),  # some above the declared upper bound 30
        "ward": np.repeat(ward_of_patient, visits),
        "sex": rng.choice(["F", "M"], n),
        "city": rng.choice(["north", "south"], n),
        "note": rng.choice(["12", "x", "7"], n),
    })


@dataclass
class FederationEnv:
    files: FederationFiles
    gateways: dict[str, Gateway]
    services: dict[str, DomainService]
    servers: dict[str, BackgroundServer]
    frames: dict[str, pd.DataFrame]
    routers: list[Router] = field(default_factory=list)

    @property
    def pooled(self) -> pd.DataFrame:
        return pd.concat([self.frames[d] for d in DOMAINS], ignore_index=True)

    def router_config(self, **domain_url_overrides):
        raw = {**self.files.router, "domains": {
            name: dict(spec, url=domain_url_overrides.get(name, spec["url"]))
            for name, spec in self.files.router["domains"].items()}}
        return parse_router_config(raw)

    def router(self, observer=None, **domain_url_overrides) -> Router:
        router = Router(self.router_config(**domain_url_overrides), observer=observer)
        self.routers.append(router)
        return router


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    ports = {name: free_port() for name in DOMAINS}
    files = federation_files({name: f"http://127.0.0.1:{port}" for name, port in ports.items()},
                             noise_domain=NOISE_DOMAIN, datasets=["clinic"])
    gateways, services, servers, frames = {}, {}, {}, {}
    try:
        for index, name in enumerate(DOMAINS):
            frames[name] = clinic_frame(600 + 150 * index, first_pid=100_000 * (index + 1),
                                        seed=index + 7)
            gateway = Gateway(tmp_path_factory.mktemp(f"domain-{name}"))
            gateway.add_dataset(clinic_metadata(), {"visits": frames[name]})
            gateways[name] = gateway
            services[name] = DomainService(gateway, parse_domain_config(files.domains[name]))
            servers[name] = BackgroundServer(domain_app(services[name]), port=ports[name]).start()
        env = FederationEnv(files, gateways, services, servers, frames)
        yield env
    finally:
        for router in env.routers if "env" in locals() else []:
            router.close()
        for server in servers.values():
            server.stop()
        for gateway in gateways.values():
            gateway.close()
