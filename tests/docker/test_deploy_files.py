"""Deployment files: no Docker engine here, so check what can be checked: they parse, and every
hpo command they run exists in the CLI with the options they pass."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
import yaml

from hpo.cli import app

DOCKER = Path(__file__).resolve().parents[2] / "docker"
CLI = typer.main.get_command(app)


def assert_cli_accepts(args: list[str]) -> None:
    name, *rest = args
    assert name in CLI.commands, f"hpo {name} is not a command"
    options = {opt for param in CLI.commands[name].params for opt in param.opts}
    for arg in rest:
        if arg.startswith("--"):
            assert arg in options, f"hpo {name} has no option {arg}"


def test_dockerfile_runs_hpo():
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["hpo"\]$', text, re.M)
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert_cli_accepts(yaml.safe_load(cmd.group(1)))
    for source in re.findall(r"^COPY (\S+)", text, re.M):
        assert (DOCKER.parent / source).exists(), source


def test_compose_has_db_workers_and_dashboard():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"db", "worker", "dashboard"}
    assert services["db"]["image"].startswith("postgres")
    for name in ("worker", "dashboard"):
        assert services[name]["environment"]["HPO_STORAGE"].startswith("postgresql+psycopg://")
        assert_cli_accepts([a.replace("${HPO_STUDY:-digits}", "digits") for a in services[name]["command"]])
    assert services["worker"]["build"]["dockerfile"] == "docker/Dockerfile"
    # Workers on one host share the decoded-image cache, and loader workers need shared memory.
    worker = services["worker"]
    cache = worker["environment"]["HPO_CACHE"]
    assert any(v.endswith(f":{cache}") and v.split(":")[0] in compose["volumes"] for v in worker["volumes"])
    assert worker["shm_size"].endswith("gb") and int(worker["shm_size"][:-2]) >= 1


def test_k8s_job_runs_workers_in_parallel():
    job = yaml.safe_load((DOCKER / "k8s-job.yaml").read_text())
    assert job["kind"] == "Job" and job["spec"]["parallelism"] > 1
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert_cli_accepts(container["args"])
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["HPO_STORAGE"]["valueFrom"]  # the password stays in a secret
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mounts[env["HPO_CACHE"]["value"]]]["hostPath"]  # one cache per node
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"


@pytest.mark.parametrize("variable", ["HPO_STORAGE", "HPO_TEST_POSTGRES_URL", "HF_HOME", "HF_HUB_OFFLINE", "HPO_CACHE",
                                      "HPO_LOADER_WORKERS", "HPO_COMPILE_BACKEND"])
def test_env_example_lists_every_variable(variable):
    text = (DOCKER.parent / ".env.example").read_text()
    assert re.search(rf"^{variable}=", text, re.M)
