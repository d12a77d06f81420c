"""A real domain server (uvicorn on 127.0.0.1, free port) with the console mounted, one
dataset, an owner and an analyst: shared by the console API and browser tests."""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from sqlgate.metadata import parse_dataset

REGIONS = ["north", "south", "east", "west"]
OWNER, OWNER_PASSWORD = "olivia", "owner-password-1"
ANALYST, ANALYST_PASSWORD = "alan", "analyst-password-1"
OTHER_ANALYST = "betty"
DATASET = "clinic"


def clinic_meta():
    return parse_dataset({
        "dataset": DATASET,
        "description": "Patients of a small clinic",
        "budget": {"epsilon": 10.0, "delta": 1e-6},
        "query": {"epsilon": 1.0, "delta": 1e-7, "mechanism": "laplace"},
        "tables": {"patients": {
            "privacy_unit": "pid", "max_groups_per_unit": 1, "max_rows_per_group": 1,
            "columns": {
                "pid": {"type": "int"},
                "age": {"type": "int", "lower": 0, "upper": 100, "nullable": False},
                "region": {"type": "string", "public_keys": REGIONS},
            }}},
    })


def clinic_frame(n: int = 2000, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"pid": np.arange(n), "age": rng.integers(0, 95, n),
                         "region": rng.choice(REGIONS, n)})


@dataclass
class ConsoleServer:
    url: str
    state: object
    frame: pd.DataFrame

    @property
    def console(self) -> str:
        return self.url + "/console/"


@contextlib.contextmanager
def running_console(home: Path) -> Iterator[ConsoleServer]:
    import uvicorn

    from server.console import routes
    from server.http.app import create_app
    from server.state import ServerState

    state = ServerState.open(home)
    try:
        frame = clinic_frame()
        state.gateway.add_dataset(clinic_meta(), {"patients": frame})
        state.users.create_user(OWNER, "owner", password=OWNER_PASSWORD)
        state.users.grant(OWNER, DATASET, "own")
        state.users.create_user(ANALYST, "analyst", password=ANALYST_PASSWORD)
        state.users.grant(ANALYST, DATASET, "query")
        state.users.create_user(OTHER_ANALYST, "analyst", password="betty-password-1")
        app = create_app(state, extra_routes=routes(state))
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                               lifespan="off"))
        thread = threading.Thread(target=server.run, name="console-test-server", daemon=True)
        thread.start()
        # Poll until uvicorn has bound its socket (or died): a readiness wait, not a timing.
        for _ in range(600):
            if server.started or not thread.is_alive():
                break
            time.sleep(0.05)
        if not server.started:
            raise RuntimeError("the test server did not start")
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield ConsoleServer(f"http://127.0.0.1:{port}", state, frame)
        finally:
            server.should_exit = True
            thread.join(timeout=30)
    finally:
        state.close()
