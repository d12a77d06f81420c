"""A domain's federation endpoint: prepare (plan + budget check) and share (charge, mask).

The domain decides everything it releases from its own configuration, not from the router's
say-so: the party list, the noise domain and the unit overlap are compared with its config
(a router cannot drop the noise domain or shrink the party set to unmask a partial), the plan
fingerprint is recomputed from its own metadata, and nonces are single-use within a time
window (a replayed nonce would reuse masks).

Order in `share` (privacy rule 4): plan -> budget pre-check -> run bounded SQL -> charge ->
noise (noise domain only, with OpenDP) -> mask -> send. What leaves is a masked vector that is
uniformly random to the router.
"""
from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from server import secure_sum
from server.auth import bearer_token
from server.router.config import DomainConfig, token_matches
from server.router.errors import FederationMismatch
from server.router.partials import (charged_partial, check_budget, federated_plan,
                                    federated_query_key)
from server.router.protocol import (FederatedPlan, Federation, default_budget_of,
                                    public_metadata, schema_fingerprint, split_measures)
from sqlgate import release as noise
from sqlgate.errors import AuthenticationFailed, InvalidParameter, PermissionDenied

_NONCE = re.compile(r"^(\d{10,12})\.([0-9a-f]{32})$")
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class NonceRegistry:
    """Nonces seen within the window; older ones are refused by their timestamp instead."""

    window_s: float
    clock: Callable[[], float] = time.time
    _seen: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def claim(self, nonce: str) -> None:
        match = _NONCE.match(nonce or "")
        if not match:
            raise InvalidParameter("the federation nonce is malformed")
        now = self.clock()
        if abs(now - int(match.group(1))) > self.window_s:
            raise InvalidParameter("the federation nonce is outside the accepted time window; "
                                   "check the clocks of router and domains")
        with self._lock:
            for old, seen_at in list(self._seen.items()):
                if now - seen_at > 2 * self.window_s:
                    del self._seen[old]
            if nonce in self._seen:
                raise PermissionDenied("this federation nonce was already used")
            self._seen[nonce] = now


class DomainService:
    def __init__(self, gateway, config: DomainConfig, *, clock: Callable[[], float] = time.time):
        self.gateway = gateway
        self.config = config
        self.nonces = NonceRegistry(config.nonce_window_s, clock)

    @property
    def name(self) -> str:
        return self.config.name

    # ------------------------------------------------------------ auth

    def authenticate(self, authorization: str | None) -> str:
        """The calling peer's name, or AuthenticationFailed. Checks every entry (no early
        exit) so timing does not tell which peer names exist."""
        token = bearer_token(authorization)
        found = None
        for peer, digest in self.config.peers.items():
            if token_matches(token, digest) and found is None:
                found = peer
        if found is None:
            raise AuthenticationFailed("missing or invalid bearer token")
        return found

    # ------------------------------------------------------------ reads

    def datasets(self) -> dict:
        """The federated datasets' public schemas, and this domain's federation settings."""
        entries = [{"metadata": public_metadata(meta), "schema_fingerprint": schema_fingerprint(meta),
                    "default_budget": default_budget_of(meta)}
                   for meta in self.gateway.datasets()
                   if meta.name.lower() in self.config.datasets]
        return {"domain": self.name, "federation": self.config.federation.to_dict(),
                "datasets": entries}

    def metadata(self, dataset: str) -> dict:
        meta = self._federated_dataset(dataset)
        return {"domain": self.name, "metadata": public_metadata(meta),
                "schema_fingerprint": schema_fingerprint(meta),
                "federation": self.config.federation.to_dict()}

    def budget(self, analyst: str, dataset: str) -> dict:
        meta = self._federated_dataset(dataset)
        status = self.gateway.budget(analyst, meta.name)
        return {"domain": self.name, "budget": status.to_dict()}

    # ------------------------------------------------------------ protocol

    def prepare(self, body: Mapping[str, Any]) -> dict:
        """Plan, verify agreement, pre-check the budget. No data, no charge."""
        request = _Request.parse(body, need_nonce=False)
        fplan = self._verified_plan(request)
        check_budget(self.gateway, fplan, request.analyst)
        return {"domain": self.name, "fingerprint": fplan.fingerprint, "length": fplan.length,
                "cost": fplan.release.cost.to_dict()}

    def share(self, body: Mapping[str, Any]) -> dict:
        """Charge this domain's ledger, then return the masked (noise domain: noised) share."""
        request = _Request.parse(body, need_nonce=True)
        fplan = self._verified_plan(request)
        self.nonces.claim(request.nonce)
        partial = charged_partial(self.gateway, fplan, analyst=request.analyst,
                                  query_key=federated_query_key(fplan, request.nonce),
                                  query_text=request.sql)
        values = partial.vector
        if self.name == fplan.federation.noise_domain:
            values = self._noised(fplan, values)
        share = secure_sum.mask_share(self.name, fplan.federation.parties,
                                      secure_sum.encode_signed(values), self.config.pair_keys,
                                      mask_context_for(fplan, request.nonce))
        return {"domain": self.name, "fingerprint": fplan.fingerprint, "length": fplan.length,
                "share": secure_sum.to_wire(share), "cost": fplan.release.cost.to_dict()}

    # ------------------------------------------------------------ internals

    def _verified_plan(self, request: "_Request") -> FederatedPlan:
        if request.federation != self.config.federation:
            raise FederationMismatch(
                f"domain '{self.name}' is configured for a different federation (parties, "
                "noise domain or unit overlap differ)")
        fplan = federated_plan(self.gateway, request.sql, request.epsilon, self.config.federation)
        if fplan.meta.name.lower() not in self.config.datasets:
            raise PermissionDenied(f"domain '{self.name}' does not federate dataset "
                                   f"'{fplan.meta.name}'")
        if fplan.fingerprint != request.fingerprint:
            raise FederationMismatch(
                f"domain '{self.name}' planned this query differently than the router (its "
                "metadata or software version differs); nothing was charged")
        return fplan

    def _federated_dataset(self, dataset: str):
        meta = self.gateway.dataset(dataset)
        if meta.name.lower() not in self.config.datasets:
            raise PermissionDenied(f"domain '{self.name}' does not federate dataset '{dataset}'")
        return meta

    @staticmethod
    def _noised(fplan: FederatedPlan, values: list[int]) -> list[int]:
        """The whole query's noise, drawn once here with OpenDP (privacy rule 2)."""
        out: list[int] = []
        for name, part in split_measures(fplan, values).items():
            out.extend(int(v) for v in noise.noisy_vector(fplan.release.noise[name], part))
        return out


def mask_context_for(fplan: FederatedPlan, nonce: str) -> bytes:
    return secure_sum.mask_context("sqlgate-federation/1", fplan.meta.name, nonce,
                                   fplan.fingerprint, ",".join(fplan.federation.parties))


@dataclass(frozen=True)
class _Request:
    sql: str
    analyst: str
    epsilon: float | None
    fingerprint: str
    federation: Federation
    nonce: str | None

    @classmethod
    def parse(cls, body: Mapping[str, Any], *, need_nonce: bool) -> "_Request":
        if not isinstance(body, Mapping):
            raise InvalidParameter("the request body must be a JSON object")
        sql, analyst = body.get("sql"), body.get("analyst")
        if not isinstance(sql, str) or not sql.strip():
            raise InvalidParameter("'sql' must be a non-empty string")
        if not isinstance(analyst, str) or not analyst:
            raise InvalidParameter("'analyst' must be a non-empty string")
        epsilon = body.get("epsilon")
        if epsilon is not None and (isinstance(epsilon, bool) or not isinstance(epsilon, (int, float))):
            raise InvalidParameter("'epsilon' must be a number")
        fingerprint = body.get("fingerprint")
        if not isinstance(fingerprint, str) or not _FINGERPRINT.match(fingerprint):
            raise InvalidParameter("'fingerprint' must be 64 hex digits")
        federation = Federation.from_dict(body.get("federation") or {})
        nonce = body.get("nonce")
        if need_nonce and not isinstance(nonce, str):
            raise InvalidParameter("'nonce' is required")
        return cls(sql, analyst, epsilon, fingerprint, federation, nonce)

