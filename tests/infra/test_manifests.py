"""Every manifest parses, every spec it carries validates, and every command it runs exists in the CLI."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from jobs.cli import build_parser
from jobs.spec import parse_spec

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
MANIFESTS = sorted(INFRA.rglob("*.yaml"))


def _documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _cli_commands() -> set[str]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return set(sub.choices)


def _commands_run(node) -> list[list[str]]:
    """Every command line a manifest runs: RayJob entrypoints, container commands/args, launcher commands."""
    found: list[list[str]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "entrypoint" and isinstance(value, str):
                found.append(shlex.split(value))
            elif (
                key in ("command", "args")
                and isinstance(value, list)
                and all(isinstance(v, str) for v in value)
            ):
                found.append(value)
            elif key.endswith("_commands") and isinstance(value, list):
                found += [shlex.split(v) for v in value if isinstance(v, str)]
            else:
                found += _commands_run(value)
    elif isinstance(node, list):
        for item in node:
            found += _commands_run(item)
    return found


def test_there_are_manifests_for_every_deployment():
    names = {p.relative_to(INFRA).as_posix() for p in MANIFESTS}
    for expected in (
        "kuberay/raycluster.yaml",
        "kuberay/rayjob.yaml",
        "kuberay/cronjob.yaml",
        "cluster-launcher/aws-gpu.yaml",
        "minio/docker-compose.yaml",
    ):
        assert expected in names
    assert (INFRA / "docker" / "Dockerfile").is_file()


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_manifest_parses(path: Path):
    docs = _documents(path)
    assert docs
    for doc in docs:
        assert isinstance(doc, dict)
        if "kind" in doc:
            assert (
                doc.get("apiVersion")
                and doc.get("metadata", {}).get("name")
                or doc["metadata"].get("generateName")
            )


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_every_unidiffuser_command_exists_in_the_cli(path: Path):
    commands = _cli_commands()
    for argv in _commands_run(_documents(path)):
        if argv and argv[0] == "unidiffuser-batch":
            assert argv[1] in commands, f"{path.name} runs '{' '.join(argv)}', not a CLI command"
            # the CLI's own parser accepts the whole command line
            build_parser().parse_args(argv[1:])


def test_rayjob_runs_the_spec_its_configmap_carries():
    rayjob = _documents(INFRA / "kuberay" / "rayjob.yaml")[0]
    (configmap,) = _documents(INFRA / "kuberay" / "job-spec-configmap.yaml")
    assert rayjob["kind"] == "RayJob"
    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert argv[:2] == ["unidiffuser-batch", "run"] and argv[2] == "/specs/job.yaml"
    volumes = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["volumes"]
    assert {"name": "spec", "configMap": {"name": configmap["metadata"]["name"]}} in volumes
    config = parse_spec(yaml.safe_load(configmap["data"]["job.yaml"]))
    assert config.model.mode.value == "i2t"


def test_cronjob_creates_the_same_rayjob_on_a_schedule():
    docs = {d["kind"]: d for d in _documents(INFRA / "kuberay" / "cronjob.yaml")}
    cron = docs["CronJob"]
    assert len(cron["spec"]["schedule"].split()) == 5
    template = yaml.safe_load(docs["ConfigMap"]["data"]["rayjob.yaml"])
    assert template == _documents(INFRA / "kuberay" / "rayjob.yaml")[0]
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["kubectl", "create", "-f", "/template/rayjob.yaml"]
    rules = docs["Role"]["rules"][0]
    assert "rayjobs" in rules["resources"] and "create" in rules["verbs"]


def test_cluster_manifests_request_gpus_for_workers():
    cluster = _documents(INFRA / "kuberay" / "raycluster.yaml")[0]
    worker = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
