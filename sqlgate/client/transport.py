"""HTTP to a sqlgate server: authentication, JSON bodies, typed errors."""
from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from typing import Any

import httpx

from sqlgate.client.errors import ConnectionFailed, error_from_json
from sqlgate.errors import InvalidParameter

DEFAULT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Credentials:
    token: str | None = None
    user: str | None = None
    password: str | None = None

    def auth(self) -> httpx.Auth | None:
        if self.password is not None:
            return httpx.BasicAuth(self.user or "", self.password)
        return None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


class Transport:
    def __init__(self, url: str, credentials: Credentials, *,
                 timeout_s: float = DEFAULT_TIMEOUT_S, verify: Any = True):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise InvalidParameter("the server URL must start with http:// or https://")
        if credentials.token is None and credentials.password is None:
            raise InvalidParameter("connect needs a token, or a user and password")
        if credentials.password is not None and not credentials.user:
            raise InvalidParameter("a password needs a user name")
        self.url = url.rstrip("/")
        if isinstance(verify, str):
            # A CA bundle path (e.g. a self-signed server certificate).
            verify = ssl.create_default_context(cafile=verify)
        self._http = httpx.Client(base_url=self.url, auth=credentials.auth(),
                                  headers=credentials.headers(), timeout=timeout_s,
                                  verify=verify)

    def close(self) -> None:
        self._http.close()

    def call(self, method: str, path: str, *, body: Any = None,
             params: dict | None = None) -> httpx.Response:
        """One request; a non-2xx answer raises the server's typed error."""
        try:
            response = self._http.request(method, path, json=body, params=params)
        except httpx.HTTPError as err:
            raise ConnectionFailed(f"cannot reach the sqlgate server at {self.url}: "
                                   f"{err.__class__.__name__}") from None
        if response.status_code >= 400:
            try:
                payload = response.json()
            except (json.JSONDecodeError, ValueError):
                payload = None
            raise error_from_json(payload, response.status_code)
        return response

    def json(self, method: str, path: str, **kwargs) -> Any:
        response = self.call(method, path, **kwargs)
        try:
            return response.json()
        except (json.JSONDecodeError, ValueError):
            raise ConnectionFailed(f"the server answered {method} {path} without JSON") from None
