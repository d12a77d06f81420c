"""SCRAM-SHA-256 server side (RFC 5802 / RFC 7677), as PostgreSQL speaks it.

The password is never seen: the client proves it knows the key behind the stored verifier
(StoredKey), and we prove we hold ServerKey. No channel binding is offered (gs2 flag 'n', or
'y' from a client that could bind but saw we do not advertise SCRAM-SHA-256-PLUS).
Unknown users get a made-up verifier and fail only at the proof, like PostgreSQL, so the
exchange does not reveal which user names exist.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass

from server.auth import SCRAM_ITERATIONS, ScramVerifier

MECHANISM = "SCRAM-SHA-256"


class ScramError(Exception):
    """The exchange failed (bad message or wrong proof); the message is safe to show."""


def parse_initial_response(data: bytes) -> tuple[str, bytes]:
    """SASLInitialResponse body -> (mechanism, client-first-message)."""
    end = data.find(b"\x00")
    if end < 0 or len(data) < end + 5:
        raise ScramError("malformed SASLInitialResponse")
    mechanism = data[:end].decode("ascii", "replace")
    (length,) = struct.unpack("!i", data[end + 1:end + 5])
    payload = data[end + 5:]
    if length != len(payload):
        raise ScramError("malformed SASLInitialResponse")
    return mechanism, payload


@dataclass
class ScramExchange:
    verifier: ScramVerifier | None
    pepper: bytes  # per-server secret for the made-up salt of unknown users
    user: str

    def __post_init__(self):
        self._server_nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        self._client_first_bare = ""
        self._server_first = ""
        self._gs2_header = ""
        self._nonce = ""
        self.succeeded = False

    def _effective(self) -> ScramVerifier:
        if self.verifier is not None:
            return self.verifier
        salt = hmac.new(self.pepper, self.user.encode(), hashlib.sha256).digest()[:16]
        return ScramVerifier(salt, SCRAM_ITERATIONS, secrets.token_bytes(32), secrets.token_bytes(32))

    def server_first(self, client_first: bytes) -> bytes:
        try:
            text = client_first.decode("utf-8")
        except UnicodeDecodeError:
            raise ScramError("malformed SCRAM client-first-message") from None
        parts = text.split(",", 2)
        if len(parts) != 3 or parts[0] not in ("n", "y") or parts[1] not in ("",):
            if parts and parts[0].startswith("p="):
                raise ScramError("channel binding is not supported by this server")
            raise ScramError("malformed SCRAM client-first-message")
        self._gs2_header = f"{parts[0]},{parts[1]},"
        self._client_first_bare = parts[2]
        attributes = _attributes(self._client_first_bare)
        client_nonce = attributes.get("r")
        if not client_nonce or "m" in attributes:
            raise ScramError("malformed SCRAM client-first-message")
        verifier = self._effective()
        self._verifier = verifier
        self._nonce = client_nonce + self._server_nonce
        self._server_first = (f"r={self._nonce},s={base64.b64encode(verifier.salt).decode()},"
                              f"i={verifier.iterations}")
        return self._server_first.encode()

    def server_final(self, client_final: bytes) -> bytes:
        """Checks the proof; raises ScramError on any mismatch."""
        try:
            text = client_final.decode("utf-8")
        except UnicodeDecodeError:
            raise ScramError("malformed SCRAM client-final-message") from None
        without_proof, sep, proof_part = text.rpartition(",p=")
        if not sep:
            raise ScramError("malformed SCRAM client-final-message")
        attributes = _attributes(without_proof)
        expected_binding = base64.b64encode(self._gs2_header.encode()).decode()
        if attributes.get("c") != expected_binding or attributes.get("r") != self._nonce:
            raise ScramError("SCRAM nonce or channel binding mismatch")
        try:
            proof = base64.b64decode(proof_part, validate=True)
        except (ValueError, base64.binascii.Error):
            raise ScramError("malformed SCRAM proof") from None
        auth_message = ",".join([self._client_first_bare, self._server_first, without_proof]).encode()
        verifier = self._verifier
        signature = hmac.new(verifier.stored_key, auth_message, hashlib.sha256).digest()
        if len(proof) != len(signature):
            raise ScramError("password authentication failed")
        client_key = bytes(a ^ b for a, b in zip(proof, signature))
        ok = hmac.compare_digest(hashlib.sha256(client_key).digest(), verifier.stored_key)
        if not ok or self.verifier is None:
            raise ScramError("password authentication failed")
        self.succeeded = True
        server_signature = hmac.new(verifier.server_key, auth_message, hashlib.sha256).digest()
        return b"v=" + base64.b64encode(server_signature)


def _attributes(text: str) -> dict[str, str]:
    attributes = {}
    for item in text.split(","):
        if len(item) < 2 or item[1] != "=":
            raise ScramError("malformed SCRAM attribute")
        attributes[item[0]] = item[2:]
    return attributes
