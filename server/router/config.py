"""Router and domain configuration files (YAML or JSON), and the bearer tokens they hold.

Secrets may be written inline, or as "env:NAME" (read from the environment) or
"file:/path" (read from a file) so that config files can be shared without them. Tokens a
party *accepts* are kept only as SHA-256 digests and compared with hmac.compare_digest.

Router file:
    federation: {noise_domain: a, max_domains_per_unit: 1}
    domains:                          # the parties, by name
      a: {url: "https://a.example:8443", token: "env:ROUTER_TO_A"}
    timeout_s: 60
    tls: {ca: ca.pem, cert: router.pem, key: router.key}     # optional (mTLS to domains)

Domain file:
    name: a
    federation: {parties: [a, b, c], noise_domain: a, max_domains_per_unit: 1}
    datasets: [hospital]              # the datasets this domain federates
    peers: {router: {token_sha256: "<hex>"}}                  # who may call this domain
    pair_keys: {b: "file:/etc/sqlgate/ab.key", c: "env:AC_KEY"}   # hex, >= 16 bytes each
    nonce_window_s: 300
    tls: {cert: a.pem, key: a.key, ca: ca.pem}   # optional (federation-domain only): HTTPS;
                                                 # with ca, the router must present a cert (mTLS)
"""
from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from server.router.protocol import Federation
from sqlgate.errors import MetadataError

_MIN_PAIR_KEY_BYTES = 16


class ConfigError(MetadataError):
    """An invalid router/domain config; the message names the field (never a secret)."""

    code = "invalid_config"


@dataclass(frozen=True)
class TlsConfig:
    cert: str | None = None
    key: str | None = None
    ca: str | None = None


@dataclass(frozen=True)
class DomainEndpoint:
    name: str
    url: str
    token: str = field(repr=False)


@dataclass(frozen=True)
class RouterConfig:
    federation: Federation
    domains: Mapping[str, DomainEndpoint]
    timeout_s: float = 60.0
    tls: TlsConfig | None = None
    name: str = "router"


@dataclass(frozen=True)
class DomainConfig:
    name: str
    federation: Federation
    datasets: tuple[str, ...]
    peers: Mapping[str, str] = field(repr=False)  # peer name -> sha256 hex of its token
    pair_keys: Mapping[str, bytes] = field(repr=False)
    nonce_window_s: float = 300.0
    tls: TlsConfig | None = None

    def __post_init__(self):
        if self.name not in self.federation.parties:
            raise ConfigError("name", "this domain is not one of federation.parties")
        missing = [p for p in self.federation.parties if p != self.name and p not in self.pair_keys]
        if missing:
            raise ConfigError("pair_keys", f"no pair key for: {', '.join(missing)}")


# ---------------------------------------------------------------- tokens


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(presented: str | None, digest: str) -> bool:
    if not presented:
        return False
    return hmac.compare_digest(token_digest(presented), digest)


# ---------------------------------------------------------------- loading


def load_yaml(path: str | Path) -> Mapping[str, Any]:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError("<file>", f"cannot read {path.name} ({type(err).__name__})") from None
    if not isinstance(raw, Mapping):
        raise ConfigError("<document>", "must be a mapping")
    return raw


def load_router_config(path: str | Path) -> RouterConfig:
    raw = load_yaml(path)
    return parse_router_config(raw, base=Path(path).parent)


def load_domain_config(path: str | Path) -> DomainConfig:
    raw = load_yaml(path)
    return parse_domain_config(raw, base=Path(path).parent)


def parse_router_config(raw: Mapping[str, Any], base: Path | None = None) -> RouterConfig:
    _reject_unknown(raw, "", {"name", "federation", "domains", "timeout_s", "tls"})
    domains_raw = _mapping(raw.get("domains"), "domains")
    if not domains_raw:
        raise ConfigError("domains", "at least one domain is needed")
    domains = {}
    for name, spec in domains_raw.items():
        spec = _mapping(spec, f"domains.{name}")
        _reject_unknown(spec, f"domains.{name}", {"url", "token"})
        url = _text(spec.get("url"), f"domains.{name}.url")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"domains.{name}.url", "must be an http(s) URL")
        domains[str(name)] = DomainEndpoint(str(name), url.rstrip("/"),
                                            _secret(spec.get("token"), f"domains.{name}.token", base))
    fed = _mapping(raw.get("federation", {}), "federation")
    _reject_unknown(fed, "federation", {"noise_domain", "max_domains_per_unit", "parties"})
    if "parties" in fed and sorted(map(str, fed["parties"])) != sorted(domains):
        raise ConfigError("federation.parties", "must list exactly the configured domains")
    try:
        federation = Federation.of(list(domains), _text(fed.get("noise_domain"),
                                                        "federation.noise_domain"),
                                   int(fed.get("max_domains_per_unit", 1)))
    except (TypeError, ValueError) as err:
        raise ConfigError("federation", str(err)) from None
    timeout = float(raw.get("timeout_s", 60.0))
    if not 0 < timeout <= 3600:
        raise ConfigError("timeout_s", "must be between 0 and 3600 seconds")
    return RouterConfig(federation=federation, domains=domains, timeout_s=timeout,
                        tls=_tls(raw.get("tls"), base),
                        name=str(raw.get("name", "router")))


def parse_domain_config(raw: Mapping[str, Any], base: Path | None = None) -> DomainConfig:
    _reject_unknown(raw, "", {"name", "federation", "datasets", "peers", "pair_keys",
                              "nonce_window_s", "tls"})
    name = _text(raw.get("name"), "name")
    fed = _mapping(raw.get("federation"), "federation")
    _reject_unknown(fed, "federation", {"parties", "noise_domain", "max_domains_per_unit"})
    try:
        federation = Federation.of([str(p) for p in fed.get("parties") or []],
                                   _text(fed.get("noise_domain"), "federation.noise_domain"),
                                   int(fed.get("max_domains_per_unit", 1)))
    except (TypeError, ValueError) as err:
        raise ConfigError("federation", str(err)) from None
    datasets = raw.get("datasets")
    if not datasets or not isinstance(datasets, (list, tuple)):
        raise ConfigError("datasets", "list the datasets this domain federates")
    peers = {}
    for peer, spec in _mapping(raw.get("peers"), "peers").items():
        spec = _mapping(spec, f"peers.{peer}")
        _reject_unknown(spec, f"peers.{peer}", {"token", "token_sha256"})
        peers[str(peer)] = _digest(spec, f"peers.{peer}", base)
    if not peers:
        raise ConfigError("peers", "at least one peer (the router) must be allowed to call")
    pair_keys = {}
    for peer, value in _mapping(raw.get("pair_keys", {}), "pair_keys").items():
        where = f"pair_keys.{peer}"
        text = _secret(value, where, base)
        try:
            key = bytes.fromhex(text.strip())
        except ValueError:
            raise ConfigError(where, "must be hex") from None
        if len(key) < _MIN_PAIR_KEY_BYTES:
            raise ConfigError(where, f"must be at least {_MIN_PAIR_KEY_BYTES} bytes")
        pair_keys[str(peer)] = key
    window = float(raw.get("nonce_window_s", 300.0))
    if not 1 <= window <= 86400:
        raise ConfigError("nonce_window_s", "must be between 1 and 86400 seconds")
    return DomainConfig(name=name, federation=federation,
                        datasets=tuple(str(d).lower() for d in datasets), peers=peers,
                        pair_keys=pair_keys, nonce_window_s=window, tls=_tls(raw.get("tls"), base))


# ---------------------------------------------------------------- helpers


def _secret(value: Any, where: str, base: Path | None) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(where, "is required")
    if value.startswith("env:"):
        found = os.environ.get(value[4:])
        if not found:
            raise ConfigError(where, f"environment variable {value[4:]} is not set")
        return found
    if value.startswith("file:"):
        try:
            return _resolve(value[5:], base).read_text().strip()
        except OSError:
            raise ConfigError(where, "the secret file cannot be read") from None
    return value


def _digest(spec: Mapping[str, Any], where: str, base: Path | None) -> str:
    if "token_sha256" in spec:
        digest = str(spec["token_sha256"]).lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ConfigError(f"{where}.token_sha256", "must be 64 hex digits")
        return digest
    return token_digest(_secret(spec.get("token"), f"{where}.token", base))


def _tls(raw: Any, base: Path | None) -> TlsConfig | None:
    if raw is None:
        return None
    spec = _mapping(raw, "tls")
    _reject_unknown(spec, "tls", {"cert", "key", "ca"})
    paths = {k: str(_resolve(str(v), base)) for k, v in spec.items() if v}
    if ("cert" in paths) != ("key" in paths):
        raise ConfigError("tls", "cert and key go together")
    return TlsConfig(**paths)


def _resolve(path: str, base: Path | None) -> Path:
    p = Path(path)
    return p if p.is_absolute() or base is None else (base / p)


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        raise ConfigError(where, "is required")
    if not isinstance(value, Mapping):
        raise ConfigError(where, "must be a mapping")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(where, "must be a non-empty string")
    return value


def _reject_unknown(spec: Mapping[str, Any], where: str, allowed: set[str]) -> None:
    unknown = sorted(set(map(str, spec)) - allowed)
    if unknown:
        raise ConfigError(where or "<document>", f"unknown field(s): {', '.join(unknown)}")
