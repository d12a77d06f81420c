"""Offline validation of the deployment: Dockerfile (hadolint + structure), compose file
(compose-spec parser + cross-checks), Kubernetes manifests (kubernetes-validate schemas +
cross-checks), and that every command, port, probe and environment variable they use is one
the code actually has and deploy/README.md documents. No docker engine or cluster needed."""
from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from tests._require import require_module, require_program
from tests.console.deployfiles import (DEPLOY, REPO, cli_parser, documented_env,
                                       dockerfile_instructions, env_pairs, env_read_by_code,
                                       env_references, example_secrets, kustomize_resources,
                                       load_compose, parse_command, stages)

K8S_VERSIONS = ("1.29.0", "1.37.0")
THIRD_PARTY_ENV = {"POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD", "PGDATA"}
SECRET_VALUES = {"SQLGATE_ROUTER_TOKEN_A": "router-token-a-" + "x" * 20,
                 "SQLGATE_ROUTER_TOKEN_B": "router-token-b-" + "y" * 20,
                 "SQLGATE_ROUTER_ANALYST_TOKEN": "analyst-token-" + "z" * 20,
                 "SQLGATE_PAIR_KEY_AB": "ab" * 32}


# ---------------------------------------------------------------- shared checks


def check_env_names(names: set[str], config_refs: set[str], where: str) -> None:
    """Every SQLGATE_* variable set for a container is documented, and is read by the code or
    by a config file mounted into that container (env:NAME); unknown names are typos."""
    documented, read = documented_env(), env_read_by_code()
    for name in names - THIRD_PARTY_ENV:
        assert name.startswith("SQLGATE_"), f"{where}: unexpected variable {name}"
        assert name in documented, f"{where}: {name} is not documented in deploy/README.md"
        assert name in read or name in config_refs, \
            f"{where}: nothing reads {name} (not in the code, not an env: reference)"
    missing = config_refs - names
    assert not missing, f"{where}: its config reads {sorted(missing)} but they are not set"


def check_router_config(text: str, monkeypatch) -> object:
    from server.router.config import parse_router_config
    for name, value in SECRET_VALUES.items():
        monkeypatch.setenv(name, value)
    return parse_router_config(yaml.safe_load(text))


def check_domain_config(text: str, monkeypatch) -> object:
    from server.router.config import parse_domain_config
    for name, value in SECRET_VALUES.items():
        monkeypatch.setenv(name, value)
    return parse_domain_config(yaml.safe_load(text))


def health_path_exists(tmp_path: Path, path: str) -> None:
    from starlette.testclient import TestClient

    from server.http.app import create_app
    from server.state import ServerState
    with ServerState.open(tmp_path / "probe-home") as state:
        with TestClient(create_app(state)) as client:
            response = client.get(path)
    assert response.status_code == 200, f"probe path {path} answers {response.status_code}"


# ---------------------------------------------------------------- Dockerfile


def test_dockerfile_passes_hadolint():
    hadolint = require_program("hadolint")
    proc = subprocess.run([hadolint, "--no-color", str(REPO / "Dockerfile")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_structure_matches_the_code():
    instructions = dockerfile_instructions()
    all_stages = stages(instructions)
    assert len(all_stages) == 2, "build + runtime stages"
    for stage in all_stages:
        image = stage[0].args.split()[0]
        name, _, tag = image.partition(":")
        assert tag and tag != "latest", f"unpinned base image {image}"
    final = {ins.keyword: ins for ins in all_stages[-1]}
    user = final["USER"].args.split(":")[0]
    assert user not in ("root", "0"), "the runtime image must not run as root"
    env = {}
    for ins in all_stages[-1]:
        if ins.keyword == "ENV":
            env.update(env_pairs(ins.args))
    check_env_names({k for k in env if k.startswith("SQLGATE_")}, set(), "Dockerfile")
    exposed = {int(p.split("/")[0]) for p in final["EXPOSE"].args.split()}
    assert exposed == {int(env["SQLGATE_HTTP_PORT"]), int(env["SQLGATE_PG_PORT"])}
    assert env["SQLGATE_HOST"] == "0.0.0.0"       # reachable from outside the container
    assert "/v1/health" in final["HEALTHCHECK"].args
    assert yaml.safe_load(final["ENTRYPOINT"].args) == ["sqlgate"]
    command = yaml.safe_load(final["CMD"].args)
    args = parse_command(["sqlgate"], command)
    assert args.command == "serve"
    assert final["VOLUME"].args.strip('[]" ') == env["SQLGATE_HOME"]

    # The wheel build asks for extras pyproject really has.
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    build = " ".join(ins.args for ins in all_stages[0] if ins.keyword == "RUN")
    for requested in (build.split('".[')[1].split(']"')[0]).split(","):
        assert requested in extras, f"unknown extra {requested}"


def test_dockerignore_keeps_the_packages_and_drops_the_rest():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for needed in ("sqlgate", "server", "rewriter", "accountant", "pyproject.toml", "README.md"):
        assert needed not in ignored and not any(needed.startswith(i + "/") for i in ignored)
    for secretish in (".git", "sqlgate-home", "tests"):
        assert secretish in ignored


# ---------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose():
    return load_compose()


def test_compose_file_is_valid_compose_spec():
    compose_spec = require_module("compose_spec")
    parsed = compose_spec.PyOptions(apply_merge=True).from_yaml(
        (DEPLOY / "compose.yaml").read_text())
    parsed.validate()
    assert {"ledger", "gateway", "router"} <= set(parsed.service_names())


def _merged_services(compose: dict) -> dict[str, dict]:
    # yaml.safe_load already applies "<<" merge keys.
    return compose["services"]


def test_compose_services_are_consistent(compose, monkeypatch, tmp_path):
    services = _merged_services(compose)
    build_image = None
    for name, svc in services.items():
        image = svc["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: unpinned {image}"
        if "build" in svc:
            build_image = build_image or image
            assert image == build_image
            assert (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() \
                == REPO / "Dockerfile"
        assert "healthcheck" in svc, f"{name}: no healthcheck"
        for dep, spec in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if spec.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep]
            # A service outside a profile must not wait for one inside it.
            if not svc.get("profiles"):
                assert not services[dep].get("profiles"), f"{name} -> {dep}"
        for net in svc.get("networks", []):
            assert net in compose["networks"], f"{name}: unknown network {net}"
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).is_file(), f"{name}: missing {source}"
            else:
                assert source in compose["volumes"], f"{name}: unknown volume {source}"

        # Commands exist in the CLI the entrypoint runs.
        if "build" in svc:
            entrypoint = svc.get("entrypoint", ["sqlgate"])
            parse_command(entrypoint, svc["command"])

        # Environment: documented, read by code or by the mounted config, all provided.
        env = svc.get("environment", {})
        config_refs = set()
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./config/"):
                config_refs |= env_references((DEPLOY / source).read_text())
        check_env_names(set(env), config_refs, f"compose service {name}")

    # The ledger is private; the gateway reaches it and publishes its documented ports.
    assert compose["networks"]["backend"]["internal"] is True
    assert "ports" not in services["ledger"]
    gateway = services["gateway"]
    env = gateway["environment"]
    published = {int(p.split(":")[-1]) for p in gateway["ports"]}
    assert published == {int(env["SQLGATE_HTTP_PORT"]), int(env["SQLGATE_PG_PORT"])}
    assert f":{env['SQLGATE_HTTP_PORT']}/v1/health" in " ".join(gateway["healthcheck"]["test"])
    dsn = urlparse(re.sub(r"\$\{[^}]*\}", "secret", env["SQLGATE_LEDGER_DSN"]))
    assert dsn.scheme == "postgresql" and dsn.hostname == "ledger" and dsn.port == 5432
    assert dsn.path == "/" + services["ledger"]["environment"]["POSTGRES_DB"]
    assert dsn.username == services["ledger"]["environment"]["POSTGRES_USER"]
    health_path_exists(tmp_path, "/v1/health")


def test_compose_interpolations_are_in_the_env_example(compose):
    text = (DEPLOY / "compose.yaml").read_text()
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    example = {line.split("=", 1)[0] for line in (DEPLOY / ".env.example").read_text().splitlines()
               if "=" in line and not line.startswith("#")}
    assert used == example
    assert all(name in documented_env() for name in used)


def test_compose_federation_configs_parse_and_point_at_services(compose, monkeypatch):
    services = _merged_services(compose)
    router_svc = services["router"]
    router_file = next(v.split(":")[0] for v in router_svc["volumes"] if "router.yaml" in v)
    router = check_router_config((DEPLOY / router_file).read_text(), monkeypatch)
    for name, endpoint in router.domains.items():
        url = urlparse(endpoint.url)
        target = services[url.hostname]
        args = parse_command(target["entrypoint"], target["command"])
        assert args.command == "federation-domain" and args.port == url.port
        domain_file = next(v.split(":")[0] for v in target["volumes"] if v.endswith(".yaml:ro"))
        domain = check_domain_config((DEPLOY / domain_file).read_text(), monkeypatch)
        assert domain.name == name and domain.federation == router.federation
        # The token the router sends is the one this domain accepts.
        from server.router.config import token_digest
        assert domain.peers["router"] == token_digest(endpoint.token)
    args = parse_command(router_svc["entrypoint"], router_svc["command"])
    assert args.command == "router"
    assert int(router_svc["ports"][0].split(":")[-1]) == args.port


# ---------------------------------------------------------------- Kubernetes


@pytest.fixture(scope="module")
def manifests():
    return kustomize_resources()


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_match_the_kubernetes_schemas(manifests, version):
    kv = require_module("kubernetes_validate")
    docs = manifests + [d for d in yaml.safe_load_all((DEPLOY / "k8s/secrets.example.yaml")
                                                      .read_text()) if d]
    for doc in docs:
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as err:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} (k8s {version}): "
                        f"{err.message} at {list(err.path)}")


def _workloads(manifests):
    return [d for d in manifests if d["kind"] in ("Deployment", "StatefulSet")]


def test_k8s_workloads_are_hardened_and_probed(manifests):
    for workload in _workloads(manifests):
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        spec = workload["spec"]
        assert spec["selector"]["matchLabels"].items() <= \
            spec["template"]["metadata"]["labels"].items(), where
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        for container in pod["containers"]:
            image = container["image"]
            assert ":" in image and not image.endswith(":latest"), f"{where}: {image}"
            assert "readinessProbe" in container and "livenessProbe" in container, where
            assert {"requests", "limits"} <= set(container["resources"]), where
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            port_names = {p["name"] for p in container.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                for kind in ("httpGet", "tcpSocket"):
                    port = container.get(probe, {}).get(kind, {}).get("port")
                    if isinstance(port, str):
                        assert port in port_names, f"{where} {probe}: unknown port {port}"
            mounts = {m["name"] for m in container.get("volumeMounts", [])}
            volumes = {v["name"] for v in pod.get("volumes", [])}
            claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
            assert mounts <= volumes | claims, f"{where}: {mounts - volumes - claims}"
    assert {w["metadata"]["name"] for w in _workloads(manifests)} >= \
        {"sqlgate-gateway", "sqlgate-ledger", "sqlgate-router"}


def test_k8s_references_resolve(manifests, tmp_path, monkeypatch):
    by_kind: dict[str, dict[str, dict]] = {}
    for doc in manifests:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    secrets = example_secrets()
    config_maps = by_kind["ConfigMap"]
    # Services select pods of some workload and target ports those pods name.
    for name, service in by_kind["Service"].items():
        selector = service["spec"]["selector"]
        targets = [w for w in _workloads(manifests)
                   if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert targets, f"Service/{name} selects no pod"
        names = {p["name"] for w in targets for c in w["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, f"Service/{name}: {port['targetPort']}"
    for workload in _workloads(manifests):
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        pod = workload["spec"]["template"]["spec"]
        mounted_configs = {v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v}
        for name in mounted_configs:
            assert name in config_maps, f"{where}: unknown ConfigMap {name}"
        for container in pod["containers"]:
            names = set()
            for source in container.get("envFrom", []):
                cm = source["configMapRef"]["name"]
                assert cm in config_maps, f"{where}: unknown ConfigMap {cm}"
                names |= set(config_maps[cm]["data"])
            for var in container.get("env", []):
                names.add(var["name"])
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets.get(ref["name"], {}), \
                        f"{where}: secret {ref['name']} has no key {ref['key']}"
            refs = set()
            for cm in mounted_configs:
                for text in config_maps[cm]["data"].values():
                    refs |= env_references(text)
            # Only configs the command line actually reads count.
            command = container.get("command", ["sqlgate"])
            args = parse_command(command, container.get("args", []))
            if getattr(args, "config", None):
                file_name = Path(args.config).name
                text = next(cm["data"][file_name] for cm in config_maps.values()
                            if cm["metadata"]["name"] in mounted_configs and file_name in cm["data"])
                refs = env_references(text)
                if args.command == "router":
                    router = check_router_config(text, monkeypatch)
                    for domain in router.domains.values():
                        url = urlparse(domain.url)
                        service = by_kind["Service"].get(url.hostname)
                        assert service, f"router domain URL {domain.url} names no Service"
                        assert url.port in {p["port"] for p in service["spec"]["ports"]}
                else:
                    check_domain_config(text, monkeypatch)
            check_env_names(names, refs, where)
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                path = container.get(probe, {}).get("httpGet", {}).get("path")
                if path:
                    health_path_exists(tmp_path / where.replace("/", "-") / probe, path)


def test_k8s_gateway_ports_match_its_configuration(manifests):
    config = next(d for d in manifests if d["kind"] == "ConfigMap"
                  and d["metadata"]["name"] == "sqlgate-gateway-env")["data"]
    gateway = next(d for d in manifests if d["kind"] == "StatefulSet"
                   and d["metadata"]["name"] == "sqlgate-gateway")
    container = gateway["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": int(config["SQLGATE_HTTP_PORT"]), "pgwire": int(config["SQLGATE_PG_PORT"])}
    assert config["SQLGATE_HOST"] == "0.0.0.0"
    assert gateway["spec"]["replicas"] == 1      # one DuckDB writer per domain home
    home = config["SQLGATE_HOME"]
    assert home in {m["mountPath"] for m in container["volumeMounts"]}
    assert parse_command(["sqlgate"], container["args"]).command == "serve"
    # Only gateway pods may reach the ledger.
    policy = next(d for d in manifests if d["kind"] == "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "sqlgate-ledger"
    allowed = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert allowed == gateway["spec"]["template"]["metadata"]["labels"] | {} or \
        allowed.items() <= gateway["spec"]["template"]["metadata"]["labels"].items()


def test_documented_env_vars_are_all_used_somewhere():
    """The README table lists no variable that nothing reads or sets."""
    read = env_read_by_code()
    configs = set()
    for path in (DEPLOY / "config").glob("*.yaml"):
        configs |= env_references(path.read_text())
    compose_text = (DEPLOY / "compose.yaml").read_text()
    for name, used_by in documented_env().items():
        assert name in read or name in configs or (used_by == "compose only" and name in compose_text), name
