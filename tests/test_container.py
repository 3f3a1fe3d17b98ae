"""The CPU container for real: build the image (.ci/container.sh), serve it, classify a photo through it.

Needs root and podman (apt-get install -y podman buildah debootstrap runc). Without podman the test
is skipped, except when REQUIRE_CONTAINER=1 (CI: .ci/run), where it fails instead. Run it alone:

    REQUIRE_CONTAINER=1 .venv/bin/python -m pytest -m container

The first build takes about ten minutes (the base image, then about 5 GB of wheels); later builds
re-use podman's layer cache under build/containers/.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from pipelines.examples import example_photos

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "container.sh"
IMAGE = "localhost/vispect:cpu"
BUILD_TIMEOUT = 45 * 60
START_TIMEOUT = 180
# Test tools that requirements.txt adds on top of requirements-serve.txt: none may be in the image.
TEST_ONLY = {"pytest", "hypothesis", "ruff", "playwright", "efficientnet-lite-pytorch"}

pytestmark = [pytest.mark.container, pytest.mark.slow]


def _require_podman():
    problems = [f"{tool} is not installed" for tool in ("podman", "debootstrap") if shutil.which(tool) is None]
    if os.geteuid() != 0:
        problems.append("it needs root (debootstrap, and the podman storage under build/containers/)")
    if not problems:
        return
    how = (
        "apt-get install -y podman buildah debootstrap runc, then as root: "
        "REQUIRE_CONTAINER=1 .venv/bin/python -m pytest -m container (CI runs it through .ci/run)"
    )
    if os.environ.get("REQUIRE_CONTAINER") == "1":
        pytest.fail(f"REQUIRE_CONTAINER=1 but {'; '.join(problems)}: {how}")
    pytest.skip(f"container test skipped: {'; '.join(problems)}. To run it: {how}")


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """podman with .ci/container.sh's settings (storage under build/containers/)."""
    env = {**os.environ, "IMAGE": IMAGE}
    result = subprocess.run([str(SCRIPT), "podman", *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_serving(url: str, name: str) -> float:
    """Seconds until ``url`` answers; fails early, with the logs, if the container stops."""
    start = time.monotonic()
    while time.monotonic() - start < START_TIMEOUT:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        state = podman("inspect", "--format", "{{.State.Status}}", name, check=False).stdout.strip()
        if state != "running":
            logs = podman("logs", name, check=False)
            pytest.fail(f"the container stopped ({state}) before serving:\n{(logs.stdout + logs.stderr)[-3000:]}")
        time.sleep(2)
    logs = podman("logs", name, check=False)
    pytest.fail(f"the app did not answer at {url} within {START_TIMEOUT} s:\n{(logs.stdout + logs.stderr)[-3000:]}")


@pytest.fixture(scope="module")
def image():
    _require_podman()
    start = time.monotonic()
    build = subprocess.run(
        [str(SCRIPT), "build"],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        env={**os.environ, "IMAGE": IMAGE},
    )
    assert build.returncode == 0, f"image build failed:\n{(build.stdout + build.stderr)[-5000:]}"
    print(f"image {IMAGE} built (or re-used) in {time.monotonic() - start:.0f} s")
    return IMAGE


@pytest.fixture(scope="module")
def served(image):
    """The container running with its port published on 127.0.0.1; stopped and removed afterwards."""
    name = f"vispect-test-{uuid.uuid4().hex[:8]}"
    port = _free_port()
    podman("run", "--detach", "--name", name, "--no-healthcheck", "--publish", f"127.0.0.1:{port}:7860", image)
    try:
        url = f"http://127.0.0.1:{port}/"
        print(f"{name} serving after {_wait_until_serving(url, name):.0f} s")
        yield name, url
    finally:
        podman("stop", "--time", "15", name, check=False, timeout=60)
        podman("rm", "--force", name, check=False, timeout=60)


def test_container_classifies_a_photo(served):
    from gradio_client import Client, handle_file

    _, url = served
    photo = next(path for path in example_photos() if path.name == "coffee.png")
    scores, verdict = Client(url, verbose=False).predict(handle_file(str(photo)), "default", 5, api_name="/classify")
    assert scores["label"] == "espresso", scores
    assert scores["confidences"][0]["confidence"] > 0.5, scores
    assert "espresso" in verdict


def test_container_runs_as_a_non_root_user_offline(served, image):
    name, _ = served
    config = json.loads(podman("image", "inspect", "--format", "{{json .Config}}", image).stdout)
    assert config.get("User") not in (None, "", "0", "root", "0:0"), config.get("User")
    uid = podman("exec", name, "id", "-u").stdout.strip()
    assert uid != "0", f"the app runs as uid {uid}"
    environment = dict(item.split("=", 1) for item in config["Env"])
    assert environment.get("HF_HUB_OFFLINE") == "1"
    # The default classifier was converted at build time, into a cache the app user can read.
    cache = environment["VISPECT_CACHE"]
    podman("exec", name, "test", "-r", f"{cache}/tf_efficientnet_lite0-in1k/model.safetensors")


def test_container_has_no_test_tools(served):
    name, _ = served
    listing = podman(
        "exec",
        name,
        "python",
        "-c",
        "import importlib.metadata as m; print('\\n'.join(d.metadata['Name'] for d in m.distributions()))",
    ).stdout
    installed = {line.strip().lower().replace("_", "-") for line in listing.splitlines() if line.strip()}
    assert "torch" in installed and "gradio" in installed
    assert not installed & TEST_ONLY, sorted(installed & TEST_ONLY)


def test_container_exported_every_model_at_build_time(served, image):
    # The image build ran `python -m pipelines.prepare`: the ONNX exports of models/ are in the
    # image's cache before any request (the demo segmenter's export takes minutes on 2 cores).
    name, _ = served
    config = json.loads(podman("image", "inspect", "--format", "{{json .Config}}", image).stdout)
    cache = dict(item.split("=", 1) for item in config["Env"])["VISPECT_CACHE"]
    exported = podman("exec", name, "ls", f"{cache}/onnx").stdout.split()
    assert any(d.startswith("steel-segformer-") for d in exported), exported
    assert any(d.startswith("steel-stage1-") for d in exported), exported
    # Run again, every model is found ready and served by ONNX Runtime.
    result = podman("exec", name, "python", "-m", "pipelines.prepare", timeout=300)
    served_by = dict(line.split(": served by ", 1) for line in result.stdout.splitlines() if ": served by " in line)
    runtimes = {Path(source).name: text.split()[0] for source, text in served_by.items()}
    assert runtimes.get("default") == "onnx", result.stdout + result.stderr
    assert runtimes.get("steel-segformer") == "onnx" and runtimes.get("steel-stage1") == "onnx", runtimes
