"""Users, tokens and grants (admin), the caller's own identity, and the audit log.

Owners may grant and revoke `query` on datasets they own (that is how they give analysts
access); everything else about users is admin-only. The audit log is readable by owners
(records about their datasets) and admins (everything).
"""
from __future__ import annotations

import hashlib

from starlette.routing import Route

from server.auth import PERMISSIONS
from server.http.endpoint import Call, endpoint
from sqlgate.errors import InvalidParameter, PermissionDenied

_ADMIN = ("admin",)
_ADMIN_OR_OWNER = ("admin", "owner")


def _user_view(call: Call, name: str) -> dict:
    user = call.state.users.user(name)
    return {**user.to_dict(),
            "grants": [g for g in call.state.users.grants() if g["user"] == user.name],
            "tokens": [t.__dict__ for t in call.state.users.tokens(user.name)]}


def me(call: Call):
    body = _user_view(call, call.user.name)
    body["datasets"] = {"query": sorted(call.state.service.queryable(call.caller)),
                        "own": sorted(call.state.service.owned(call.caller))}
    return body


def list_users(call: Call):
    return {"users": [u.to_dict() for u in call.state.users.users()]}


def create_user(call: Call):
    name = call.field("name")
    role = call.field("role")
    password = call.field("password", str, required=False)
    user = call.state.users.create_user(name, role, password=password)
    token = call.state.users.issue_token(user.name, label=call.field("label", str, required=False))
    call.audit.update(details={"user": user.name, "role": user.role,
                               "password_set": password is not None})
    # The token is shown once, here; only its hash is stored.
    return {**user.to_dict(), "token": token}


def get_user(call: Call):
    return _user_view(call, call.param("user"))


def disable_user(call: Call):
    name = call.param("user")
    if name == call.user.name:
        raise InvalidParameter("admins cannot disable themselves")
    call.state.users.disable_user(name)
    call.audit.update(details={"user": name})
    return {"disabled": name}


def set_password(call: Call):
    name = call.param("user")
    call.state.users.set_password(name, call.field("password"))
    call.audit.update(details={"user": name})
    return {"user": name, "password_set": True}


def issue_token(call: Call):
    name = call.param("user")
    token = call.state.users.issue_token(name, label=call.field("label", str, required=False))
    call.audit.update(details={"user": name})
    [info] = [t for t in call.state.users.tokens(name)
              if t.token_id == _token_id(token)]
    return {"user": name, "token": token, "token_id": info.token_id}


def list_tokens(call: Call):
    name = call.param("user")
    call.state.users.user(name)
    return {"tokens": [t.__dict__ for t in call.state.users.tokens(name)]}


def revoke_token(call: Call):
    name, token_id = call.param("user"), call.param("token_id")
    call.state.users.revoke_token(name, token_id)
    call.audit.update(details={"user": name, "token_id": token_id})
    return {"revoked": token_id}


def _token_id(token: str) -> str:
    # UserStore shows tokens by the first 12 hex digits of their SHA-256.
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def _grant_target(call: Call) -> tuple[str, str, str]:
    name, permission = call.param("user"), call.param("permission")
    if permission not in PERMISSIONS:
        raise InvalidParameter(f"permission must be one of {', '.join(PERMISSIONS)}")
    if call.user.is_admin:
        # Admins may grant on a dataset before it is uploaded; keep the catalog's spelling
        # when it exists.
        wanted = call.param("dataset")
        stored = [m.name for m in call.state.gateway.datasets() if m.name.lower() == wanted.lower()]
        dataset = stored[0] if stored else wanted
    else:
        if permission != "query":
            raise PermissionDenied("only admins grant ownership")
        dataset = call.state.service.require(call.caller, call.param("dataset"), "own")
    call.audit.update(dataset=dataset, details={"user": name, "permission": permission})
    return name, dataset, permission


def grant(call: Call):
    name, dataset, permission = _grant_target(call)
    call.state.users.grant(name, dataset, permission)
    return {"user": name, "dataset": dataset, "permission": permission, "granted": True}


def revoke(call: Call):
    name, dataset, permission = _grant_target(call)
    call.state.users.revoke(name, dataset, permission)
    return {"user": name, "dataset": dataset, "permission": permission, "granted": False}


def list_grants(call: Call):
    dataset = call.query("dataset")
    if call.user.is_admin:
        return {"grants": call.state.users.grants(dataset)}
    owned = call.state.service.owned(call.caller)
    grants = [g for g in call.state.users.grants(dataset)
              if g["dataset"].lower() in {o.lower() for o in owned}]
    return {"grants": grants}


# ---------------------------------------------------------------- audit


def read_audit(call: Call):
    filters = {name: call.query(name) for name in
               ("actor", "dataset", "action", "decision", "channel", "since", "until")}
    after = call.int_query("after_seq", 0, 0, 2**62)
    limit = call.int_query("limit", 100, 1, 10_000)
    scope = {}
    if not call.user.is_admin:
        # Owners see records about their datasets only, not other users' logins or admin work,
        # and only records made while they held `own`: from the time of their current grant.
        # Dropping a dataset deletes its grants, so whoever uploads a new dataset under the
        # same name gets a fresh grant and cannot read the old dataset's history (who queried
        # it, what SQL, which requests). A revoked-then-regranted owner also starts afresh:
        # the conservative choice, as we cannot tell what happened in between.
        owned = call.state.service.owned(call.caller)
        since = _own_granted_at(call.state.users, call.user.name, owned)
        scope = {"datasets": set(since), "include_unscoped": False, "owned_since": since}
    records = call.state.audit.records(**filters, after_seq=after, limit=limit, **scope)
    call.audit.update(details={"returned": len(records)})
    return {"records": records, "head": call.state.audit.head()}


def _own_granted_at(users, name: str, owned: set[str]) -> dict[str, str]:
    """{dataset: when `name` was granted own on it} for the datasets in `owned`. Grants are
    matched case-insensitively (like dataset names); with several, the latest counts."""
    latest: dict[str, str] = {}
    for grant in users.grants():
        if grant["user"] == name and grant["permission"] == "own":
            key = grant["dataset"].lower()
            if grant["granted_at"] > latest.get(key, ""):
                latest[key] = grant["granted_at"]
    return {dataset: latest[dataset.lower()] for dataset in owned
            if dataset.lower() in latest}


def verify_audit(call: Call):
    report = call.state.audit.verify()
    call.audit.update(details=report.to_dict())
    return {**report.to_dict(), "head": call.state.audit.head()}


def routes() -> list[Route]:
    return [
        Route("/v1/me", endpoint("me", me), methods=["GET"]),
        Route("/v1/users", endpoint("users.list", list_users, roles=_ADMIN), methods=["GET"]),
        Route("/v1/users", endpoint("users.create", create_user, json_body=True, roles=_ADMIN),
              methods=["POST"]),
        Route("/v1/users/{user}", endpoint("users.get", get_user, roles=_ADMIN), methods=["GET"]),
        Route("/v1/users/{user}", endpoint("users.disable", disable_user, roles=_ADMIN),
              methods=["DELETE"]),
        Route("/v1/users/{user}/password", endpoint("users.password", set_password,
                                                    json_body=True, roles=_ADMIN),
              methods=["PUT"]),
        Route("/v1/users/{user}/tokens", endpoint("tokens.list", list_tokens, roles=_ADMIN),
              methods=["GET"]),
        Route("/v1/users/{user}/tokens", endpoint("tokens.issue", issue_token, json_body=True,
                                                  roles=_ADMIN), methods=["POST"]),
        Route("/v1/users/{user}/tokens/{token_id}",
              endpoint("tokens.revoke", revoke_token, roles=_ADMIN), methods=["DELETE"]),
        Route("/v1/grants", endpoint("grants.list", list_grants, roles=_ADMIN_OR_OWNER),
              methods=["GET"]),
        Route("/v1/users/{user}/grants/{dataset}/{permission}",
              endpoint("grants.grant", grant, roles=_ADMIN_OR_OWNER), methods=["PUT"]),
        Route("/v1/users/{user}/grants/{dataset}/{permission}",
              endpoint("grants.revoke", revoke, roles=_ADMIN_OR_OWNER), methods=["DELETE"]),
        Route("/v1/audit", endpoint("audit.read", read_audit, roles=_ADMIN_OR_OWNER),
              methods=["GET"]),
        Route("/v1/audit/verify", endpoint("audit.verify", verify_audit, roles=_ADMIN_OR_OWNER),
              methods=["GET"]),
    ]
