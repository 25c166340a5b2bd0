"""The Dockerfile, checked without a container runtime: what it copies exists, it installs
the wheel with no extras (so no torch), runs npm ci without dev dependencies in its own
stage, runs as a non-root user, starts the server with flags the server takes, and the
Kubernetes example runs that command; hadolint finds nothing where it is installed.
Building and running the image needs Docker or Podman, which CI does not have."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from streamfer.server.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
dockerfile = pytest.importorskip("dockerfile")
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


@pytest.fixture(scope="module")
def stages() -> list[list]:
    """The Dockerfile's instructions, one list per stage (the official BuildKit parser)."""
    out: list[list] = []
    for cmd in dockerfile.parse_file(str(ROOT / "Dockerfile")):
        if cmd.cmd.upper() == "FROM":
            out.append([])
        out[-1].append(cmd)
    return out


def named(stage: list, what: str) -> list:
    return [c for c in stage if c.cmd.upper() == what]


def test_every_copy_source_exists_and_nothing_ignored_is_copied(stages: list[list]) -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for stage in stages:
        for copy in named(stage, "COPY"):
            if any(f.startswith("--from=") for f in copy.flags):
                continue
            for source in copy.value[:-1]:
                assert (ROOT / source).exists(), copy.original
                assert not any(source.rstrip("/") == i for i in ignored), copy.original
    assert "web/node_modules" in ignored and ".venv" in ignored


def test_the_page_stage_installs_the_detector_without_dev_dependencies(
        stages: list[list]) -> None:
    page = stages[0]
    assert named(page, "FROM")[0].value[0].startswith("node:")
    (run,) = named(page, "RUN")
    assert "npm ci --omit=dev" in run.value[0]
    copied = [c for s in stages for c in named(s, "COPY") if "--from=page" in c.flags]
    assert copied and "@mediapipe/face_detection" in copied[0].value[0]
    # ... and the Worker detector's runtime (streamfer/server/vendor.py RUNTIME_FILES)
    assert any(c.value[0].rstrip("/").endswith("node_modules/@litertjs") for c in copied)


def test_the_server_image_is_slim_non_root_and_installs_no_extra(stages: list[list]) -> None:
    final = stages[-1]
    base = named(final, "FROM")[0].value[0]
    assert base.startswith("python:") and "slim" in base
    python = base.split(":")[1].split("-")[0]
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert tuple(map(int, python.split("."))) >= tuple(
        map(int, requires["requires-python"].lstrip(">=").split(".")))
    (run,) = named(final, "RUN")
    pip = run.value[0].split("&&")[0].split()
    assert pip[:3] == ["pip", "install", "--no-cache-dir"]
    assert pip[3:] == ["/tmp/wheels/streamfer-*.whl"]  # the wheel alone: no [extra], no torch
    assert "torch" not in " ".join(requires["dependencies"])
    (user,) = named(final, "USER")
    assert user.value[0] not in ("root", "0") and "useradd" in run.value[0]


def test_the_image_and_the_kubernetes_example_run_the_same_server(stages: list[list]) -> None:
    (entry,) = named(stages[-1], "ENTRYPOINT")
    (cmd,) = named(stages[-1], "CMD")
    assert entry.json and entry.value == ("python", "-m", "streamfer.serve") and cmd.json
    config = parse_config(list(cmd.value), env={})
    assert (config.host, config.port) == ("0.0.0.0", 8080)
    (expose,) = named(stages[-1], "EXPOSE")
    assert expose.value[0] == str(config.port)
    manifest = next(d for d in yaml.safe_load_all(
        (ROOT / "deploy" / "kubernetes" / "streamfer.yaml").read_text()) if d["kind"] ==
        "Deployment")
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    assert "command" not in container and tuple(container["args"]) == cmd.value
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["ports"][0]["containerPort"] == config.port


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed")
def test_hadolint_finds_nothing() -> None:
    done = subprocess.run(["hadolint", str(ROOT / "Dockerfile")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
