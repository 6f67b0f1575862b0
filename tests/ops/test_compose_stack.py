"""The compose stack's services, run as local processes exactly as docker-compose.yml defines them.

docker-compose.yml is resolved by the real Compose parser with test ports and folders in the
environment; every named volume becomes a temporary folder, every bind mount its host folder.
Then, as `docker compose up` would: the one-shot `repository` service builds the model repository
and exits 0 (and, run again as on a second `up`, exits 0 and writes nothing), the `server` starts
on it and becomes healthy through the compose healthcheck command, and the `worker` turns a job
file dropped into jobs/ into a gallery in results/. A broken command in the compose file fails
here. The example job files the image ships validate against the example digits beside them.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ops.stack import (
    LocalService,
    copy_like_the_image,
    install_like_the_image,
    local_service,
    parse_duration,
    resolve,
)

pytestmark = pytest.mark.slow

# The lenet5-mnist entry ships trained weights, so `export --all` always exports at least it.
SHIPPED_MODEL = "lenet5-mnist"


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(service: LocalService, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        service.argv, env=service.env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def _start(service: LocalService, cwd: Path, log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(
            service.argv, env=service.env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT
        )


def _stop(process: subprocess.Popen, grace: float) -> int:
    """SIGTERM, as `docker compose stop` sends, then wait up to the grace period."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"still running {grace:.0f}s after SIGTERM") from None


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("stack")
    for folder in ("jobs", "results", "volume-models", "logs", "home", "image"):
        (root / folder).mkdir()
    # the services run the project as the image installs it, from a folder outside the checkout
    # (the image's WORKDIR), so a file the image would lack is missing here too
    bin_dir = install_like_the_image(root / "image")
    env = {
        "CNNZOO_LISTEN": "127.0.0.1",  # the container's 0.0.0.0 is not needed on the host
        "CNNZOO_GRPC_PORT": str(_free_port()),
        "CNNZOO_METRICS_PORT": str(_free_port()),
        "CNNZOO_DATA": str(data_dir),
        "CNNZOO_JOBS": str(root / "jobs"),
        "CNNZOO_RESULTS": str(root / "results"),
        "CNNZOO_POLL_SECONDS": "1",
        # two explanation methods per classifier instead of every one: the same code path,
        # a fraction of the export time (the server builds any other method on demand)
        "CNNZOO_EXPORT_FLAGS": "--explanations gradient,grad-cam",
    }
    config = resolve(env=env)
    volumes = {"models": root / "volume-models"}
    services = {name: local_service(config, name, volumes, bin_dir) for name in config["services"]}
    processes: dict[str, subprocess.Popen] = {}
    yield {
        "root": root,
        "home": root / "home",
        "env": env,
        "config": config,
        "volumes": volumes,
        "bin_dir": bin_dir,
        "services": services,
        "processes": processes,
    }
    for process in processes.values():
        if process.poll() is None:
            process.kill()
            process.wait()


def test_services_run_the_project_as_the_image_installs_it(stack):
    for service in stack["services"].values():
        assert Path(service.argv[0]).parent == service.bin_dir
    python = stack["services"]["server"].bin_dir / "python"
    where = subprocess.run(
        [str(python), "-c", "from cnnzoo import interpret, serving, zoo; print(zoo.__file__)"],
        cwd=stack["home"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(stack["root"] / "image")


def test_the_wheel_installs_one_top_level_package_cnnzoo(stack):
    """Nothing generic (zoo, serving, protos, ...) lands in a user's site-packages."""
    venv = stack["root"] / "image" / "venv"
    [record] = venv.glob("lib/python*/site-packages/cnnzoo-*.dist-info/RECORD")
    files = [line.rsplit(",", 2)[0] for line in record.read_text().splitlines()]
    in_site_packages = [f for f in files if not f.startswith("..")]  # `..`: the console script
    top_level = {
        f.split("/")[0] for f in in_site_packages if not f.split("/")[0].endswith(".dist-info")
    }
    assert top_level == {"cnnzoo"}
    for package in ("zoo", "serving", "interpret", "protos", "serving/grpc_api", "interpret/jobs"):
        assert f"cnnzoo/{package}/__init__.py" in files


def test_the_installed_package_copies_out_its_examples(stack):
    """`cnnzoo examples DEST` from the wheel, outside the checkout: the README's example commands
    then run against DEST (here the example job validates; it reads DEST/digits)."""
    dest = stack["home"] / "examples"
    cnnzoo = str(stack["bin_dir"] / "cnnzoo")
    done = subprocess.run(
        [cnnzoo, "examples", str(dest)], cwd=stack["home"], capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(list(dest.glob("digits/*/*.png"))) == 20
    assert len(list(dest.glob("cifar10/*/*.png"))) == 10
    checked = subprocess.run(
        [cnnzoo, "job", str(dest / "jobs" / "lenet5-digits.toml"), "--check"],
        cwd=stack["home"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    assert "ok (" in checked.stdout


def test_repository_service_builds_the_model_repository(stack):
    repository: LocalService = stack["services"]["repository"]
    result = _run(repository, stack["home"], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    models = stack["root"] / "volume-models"
    assert (models / SHIPPED_MODEL / "config.pbtxt").is_file()
    from cnnzoo.zoo.repository import ModelRepository

    repo = ModelRepository(models)
    assert SHIPPED_MODEL in repo.models()
    for model in repo.models():
        repo.verify(model, repo.latest_version(model))  # every sha256 in the manifest holds


def test_repository_service_exits_zero_again_and_without_a_dataset(stack):
    # A second `docker compose up` on a host without a dataset: the volume already holds the
    # repository, and the data folder is the empty one Docker creates for a missing ./data.
    empty = stack["root"] / "no-data"
    empty.mkdir()
    config = resolve(env={**stack["env"], "CNNZOO_DATA": str(empty)})
    repository = local_service(config, "repository", stack["volumes"], stack["bin_dir"])
    models = stack["root"] / "volume-models"
    from cnnzoo.zoo.repository import ModelRepository

    versions = {m: ModelRepository(models).versions(m) for m in ModelRepository(models).models()}
    before = _snapshot(models)
    result = _run(repository, stack["home"], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    # every model is up to date: no new version, not one file touched
    repo = ModelRepository(models)
    assert {m: repo.versions(m) for m in repo.models()} == versions
    assert _snapshot(models) == before
    lines = result.stdout.splitlines()
    # one line per classifier; an up-to-date classifier's explanation models are left alone
    classifiers = {m: v for m, v in versions.items() if "." not in m}
    assert len(lines) == len(classifiers), result.stdout
    for model, numbers in classifiers.items():
        [line] = [line for line in lines if line.startswith(f"{model}: ")]
        assert f"up to date, version {numbers[-1]}" in line, line
    repo.verify(SHIPPED_MODEL, repo.latest_version(SHIPPED_MODEL))


def test_example_jobs_shipped_in_the_image_are_valid(stack):
    # the image's COPY of the examples, done into a local stand-in for its file system
    image = stack["root"] / "image"
    copied = copy_like_the_image(image / "context", image / "rootfs")
    examples = copied["/opt/cnnzoo/examples"]
    job = examples / "jobs" / "lenet5-digits.toml"  # reads ../digits, the example digits
    worker: LocalService = stack["services"]["worker"]
    checked = subprocess.run(
        worker.command(["cnnzoo", "job", str(job), "--check"]),
        env=worker.env,
        cwd=stack["home"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(f"{job}: ok")


def test_server_service_becomes_healthy(stack):
    server: LocalService = stack["services"]["server"]
    health, timing = server.healthcheck(stack["config"])

    # Before the server runs, the healthcheck must report unhealthy (else it proves nothing).
    early = subprocess.run(
        health,
        env=server.env,
        cwd=stack["home"],
        capture_output=True,
        timeout=timing["timeout"] + 30,
    )
    assert early.returncode != 0

    stack["models_before_server"] = _snapshot(stack["root"] / "volume-models")
    log = stack["root"] / "logs" / "server.log"
    process = _start(server, stack["home"], log)
    stack["processes"]["server"] = process
    # Compose marks the service healthy on the first passing check inside start_period (+ retries
    # x interval after it); poll faster than `interval` so the test does not idle.
    deadline = time.monotonic() + timing["start_period"] + timing["retries"] * timing["interval"]
    while True:
        assert process.poll() is None, f"server exited {process.returncode}:\n{log.read_text()}"
        check = subprocess.run(
            health,
            env=server.env,
            cwd=stack["home"],
            capture_output=True,
            text=True,
            timeout=timing["timeout"] + 30,
        )
        if check.returncode == 0:
            break
        assert time.monotonic() < deadline, f"never healthy:\n{check.stderr}\n{log.read_text()}"
        time.sleep(0.5)


def test_server_metrics_are_published_on_the_metrics_port(stack):
    assert stack["processes"]["server"].poll() is None
    port = stack["env"]["CNNZOO_METRICS_PORT"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    assert "nv_inference_request_success" in text


# A small Zeiler-Fergus job on the shipped model over MNIST from the mounted data folder.
SMOKE_JOB = """\
name = "ops-smoke"
model = "lenet5-mnist"
weights = "default"

[dataset]
name = "mnist"
split = "test"
subset = 200

[[analyses]]
kind = "max-activations"
layers = ["features.c1"]
channels = 2
top_k = 4

[[analyses]]
kind = "filters"
"""


def _drop_job(jobs: Path, file_name: str, text: str) -> None:
    """Put a job file into jobs/ complete, as a user's `mv` would (written aside, then renamed)."""
    aside = jobs / f".{file_name}.partial"  # the worker ignores dot files
    aside.write_text(text)
    aside.rename(jobs / file_name)


def test_worker_service_turns_a_dropped_job_into_a_gallery(stack):
    worker: LocalService = stack["services"]["worker"]
    log = stack["root"] / "logs" / "worker.log"
    process = _start(worker, stack["home"], log)
    stack["processes"]["worker"] = process
    jobs, results = stack["root"] / "jobs", stack["root"] / "results"
    _drop_job(jobs, "smoke.toml", SMOKE_JOB)

    status_file = results / ".status" / "smoke.toml.json"
    deadline = time.monotonic() + 90
    while not status_file.is_file():
        assert process.poll() is None, f"worker exited {process.returncode}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"job not finished after 90s:\n{log.read_text()}"
        time.sleep(0.5)
    status = json.loads(status_file.read_text())
    assert status["state"] == "done", status

    gallery = results / "ops-smoke"
    assert (gallery / "index.html").is_file()
    pages = "".join(page.read_text() for page in gallery.glob("*.html"))  # the gallery's site
    manifest = json.loads((gallery / "manifest.json").read_text())
    assert manifest["model"]["name"] == SHIPPED_MODEL
    # the dataset came through the mounted data folder
    assert manifest["dataset"] == {"images": 200, "name": "mnist", "split": "test"}
    pictures = re.findall(r'src="([^"]+\.png)"', pages)
    assert pictures, "the gallery shows no pictures"
    for picture in pictures:
        assert (gallery / picture).is_file(), f"the gallery shows a missing {picture}"
    assert process.poll() is None, "the worker must keep watching after a job"


@pytest.mark.parametrize("name", ["worker", "server"])
def test_services_stop_within_their_grace_period(stack, name):
    process = stack["processes"][name]
    assert process.poll() is None, f"{name} is not running"
    grace = parse_duration(stack["config"]["services"][name]["stop_grace_period"])
    code = _stop(process, grace)
    # the server drains in-flight requests, the worker leaves an unfinished job to resume;
    # both then exit cleanly
    assert code == 0, code
    if name == "server":
        # compose mounts the volume read-only into the server: it must not have written to it
        assert _snapshot(stack["root"] / "volume-models") == stack["models_before_server"]
