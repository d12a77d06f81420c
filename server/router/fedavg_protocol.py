"""What the router and the domains agree on for one federated training job (pure, torch-free).

A federated DP-SGD job is identified by a router-chosen random `job_id` and a fingerprint
over everything that decides what is trained and released: the job id, the dataset and its
public schema, the analyst, the canonical training spec (parsed, defaults filled in), the
number of rounds, the update clip and the federation settings. Each domain recomputes the
fingerprint from its OWN metadata and configuration, and later from the approval request its
owner approved, so an approval covers exactly one job and nothing else.

Weights travel as little-endian float32 vectors (the models' dtype) in base64.
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from server.router.protocol import Federation
from sqlgate.errors import InvalidParameter

FEDAVG_PROTOCOL = "sqlgate-fedavg/1"
MAX_ROUNDS = 1_000
MAX_UPDATE_CLIP = 1e6
MAX_PARAMETERS = 4_000_000
# Request bodies of the fedavg routes carry whole weight vectors, so they get a larger bound
# than the query routes (4M float32 parameters in base64 plus the envelope).
MAX_BODY_BYTES = 24 << 20
FEDERATED_KEY = "federated"
"""Key of the federated block inside a domain approval request's `spec`. Its presence makes
torch_bridge's local training runner refuse the request (unknown spec field), so an approval
for a federated job can never run as a local job that releases local weights."""

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


def check_job_id(value: Any) -> str:
    if not isinstance(value, str) or not _JOB_ID.match(value):
        raise InvalidParameter("'job_id' must be 32 hex digits")
    return value


def check_fingerprint(value: Any) -> str:
    if not isinstance(value, str) or not _FINGERPRINT.match(value):
        raise InvalidParameter("'fingerprint' must be 64 hex digits")
    return value


def check_rounds(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ROUNDS:
        raise InvalidParameter(f"rounds must be an integer from 1 to {MAX_ROUNDS}")
    return value


def check_update_clip(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not 0 < value <= MAX_UPDATE_CLIP:
        raise InvalidParameter(f"update_clip must be a number > 0 and <= {MAX_UPDATE_CLIP:g}")
    return float(value)


@dataclass(frozen=True)
class JobTerms:
    """The approved terms of one federated training job (all public)."""

    job_id: str
    dataset: str
    schema: str               # schema_fingerprint of the dataset's public metadata
    analyst: str
    spec: Mapping[str, Any]   # TrainingSpec.to_dict() (canonical)
    rounds: int
    update_clip: float
    federation: Federation

    @property
    def fingerprint(self) -> str:
        body = {"protocol": FEDAVG_PROTOCOL, "job_id": self.job_id,
                "dataset": self.dataset.lower(), "schema": self.schema, "analyst": self.analyst,
                "spec": dict(self.spec), "rounds": self.rounds,
                "update_clip": repr(float(self.update_clip)),
                "federation": self.federation.to_dict()}
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def request_spec(self) -> dict:
        """The spec stored in a domain's approval request: the training spec the owner
        reviews, plus the federated block binding it to this job."""
        return {**dict(self.spec), FEDERATED_KEY: {
            "job_id": self.job_id, "rounds": self.rounds, "update_clip": self.update_clip,
            "parties": list(self.federation.parties), "fingerprint": self.fingerprint}}


def encode_weights(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def decode_weights(text: Any, length: int) -> np.ndarray:
    """A float32 weight vector of exactly `length` finite values."""
    if not isinstance(text, str):
        raise InvalidParameter("'weights' must be a base64 string")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise InvalidParameter("'weights' is not valid base64") from None
    if len(raw) != 4 * length:
        raise InvalidParameter(f"'weights' must hold exactly {length} float32 values")
    vector = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if not np.all(np.isfinite(vector)):
        raise InvalidParameter("'weights' must be finite numbers")
    return vector


def mask_context(terms_fingerprint: str, job_id: str, nonce: str, round_number: int,
                 parties) -> bytes:
    """Masks are bound to the job, its start nonce and the round: a round is served once."""
    from server.secure_sum import mask_context as context
    return context(FEDAVG_PROTOCOL, job_id, terms_fingerprint, nonce, str(int(round_number)),
                   ",".join(parties))
