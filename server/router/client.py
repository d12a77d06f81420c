"""The router's HTTP client for one domain: bearer-token auth, optional mTLS, typed errors."""
from __future__ import annotations

import ssl
from typing import Any, Mapping

import httpx

from server.router.config import DomainEndpoint, TlsConfig
from server.router.errors import FederationFailed, error_from_body

FEDERATION_PREFIX = "/federation/v1"


def ssl_context(tls: TlsConfig | None) -> ssl.SSLContext | bool:
    if tls is None:
        return True
    context = ssl.create_default_context(cafile=tls.ca) if tls.ca else ssl.create_default_context()
    if tls.cert:
        context.load_cert_chain(tls.cert, tls.key)
    return context


class DomainClient:
    def __init__(self, endpoint: DomainEndpoint, *, timeout_s: float = 60.0,
                 tls: TlsConfig | None = None, transport: httpx.BaseTransport | None = None):
        self.name = endpoint.name
        self._client = httpx.Client(
            base_url=endpoint.url + FEDERATION_PREFIX, timeout=timeout_s,
            headers={"Authorization": f"Bearer {endpoint.token}"},
            verify=ssl_context(tls) if endpoint.url.startswith("https://") else True,
            transport=transport, trust_env=False, follow_redirects=False)

    def get(self, path: str, params: Mapping[str, str] | None = None) -> dict:
        return self._call("GET", path, params=params)

    def post(self, path: str, body: Mapping[str, Any]) -> dict:
        return self._call("POST", path, json=dict(body))

    def close(self) -> None:
        self._client.close()

    def _call(self, method: str, path: str, **kwargs) -> dict:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise FederationFailed(f"domain '{self.name}' did not answer in time; nothing was "
                                   "released", details={"domain": self.name}) from None
        except httpx.HTTPError:
            raise FederationFailed(f"domain '{self.name}' is unreachable; nothing was released",
                                   details={"domain": self.name}) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code != 200:
            raise error_from_body(self.name, body, response.status_code)
        if not isinstance(body, dict):
            raise FederationFailed(f"domain '{self.name}' sent a malformed answer",
                                   details={"domain": self.name})
        return body
