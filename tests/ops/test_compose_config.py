"""The compose files as the real Compose v2 parser reads them: valid, configurable, GPU optional."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ops.stack import (
    BASE_FILE,
    GPU_FILE,
    dockerfile_stages,
    parse_duration,
    resolve,
    run_compose,
)

SERVICES = {"repository", "server", "worker"}


def _devices(service: dict) -> list:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


@pytest.mark.parametrize("files", [(BASE_FILE,), (BASE_FILE, GPU_FILE)], ids=["cpu", "gpu"])
def test_compose_files_pass_the_compose_parser(files):
    result = run_compose(["config", "-q"], files)
    assert result.returncode == 0, result.stderr


def test_the_parser_rejects_a_broken_file(tmp_path: Path):
    # Guards the check above: the validator must be able to fail (the package's wrapper script
    # exits 0 whatever happens, which is why the bundled binary is called directly).
    broken = tmp_path / "docker-compose.yml"
    text = BASE_FILE.read_text()
    assert "condition: service_completed_successfully" in text
    broken.write_text(text.replace("service_completed_successfully", "service_finished"))
    result = run_compose(["config", "-q"], [broken])
    assert result.returncode != 0
    assert "depends_on.repository.condition" in result.stderr


def test_defaults_give_the_documented_cpu_stack():
    config = resolve(env={})
    services = config["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        # the server's image has no torch; exporting and jobs need it
        image = "server" if name == "server" else "cpu"
        assert service["image"] == f"cnnzoo:{image}"
        assert service["build"]["target"] == image
        assert service["init"] is True
        assert not _devices(service), "the base file must start on a host without a GPU"

    server = services["server"]
    assert server["command"][:3] == ["serve", "--repository", "/models"]
    assert server["command"][server["command"].index("--device") + 1] == "auto"
    published = {(p["host_ip"], p["published"], p["target"]) for p in server["ports"]}
    assert published == {
        ("127.0.0.1", "8001", 8001),
        ("127.0.0.1", "8000", 8000),
        ("127.0.0.1", "8002", 8002),
    }
    command = server["command"]
    assert command[command.index("--http-port") + 1] == "8000"
    # no client outside the container shares its /dev/shm: the extension is not offered
    assert command[command.index("--shared-memory") + 1] == "off"
    assert server["healthcheck"]["test"] == [
        "CMD",
        "cnnzoo",
        "health",
        "--server",
        "127.0.0.1:8001",
    ]
    assert server["depends_on"]["repository"]["condition"] == "service_completed_successfully"
    assert server["restart"] == "unless-stopped"
    assert server["stop_grace_period"] == "30s"
    # the server drains in-flight requests before Compose's SIGKILL
    drain = float(server["command"][server["command"].index("--grace-seconds") + 1])
    assert drain < parse_duration(server["stop_grace_period"])

    repository = services["repository"]
    # a second `up` keeps the versions that are already there instead of adding new ones
    assert repository["command"] == [
        "export",
        "--all",
        "--skip-unchanged",
        "--repository",
        "/models",
    ]
    assert repository["restart"] == "no"
    # the server reads the volume the one-shot step wrote, and only reads it
    [written] = [v for v in repository["volumes"] if v["target"] == "/models"]
    [served] = [v for v in server["volumes"] if v["target"] == "/models"]
    assert written["type"] == served["type"] == "volume"
    assert written["source"] == served["source"]
    assert served.get("read_only") is True
    assert config["volumes"][served["source"]]["name"] == "cnnzoo_models"

    worker = services["worker"]
    binds = {v["target"]: v["source"] for v in worker["volumes"] if v["type"] == "bind"}
    assert {"/jobs", "/results", "/data"} <= set(binds)
    assert Path(binds["/jobs"]) == BASE_FILE.parent / "jobs"
    assert Path(binds["/results"]) == BASE_FILE.parent / "results"
    assert worker["user"] == "10001:10001"


def test_every_setting_comes_from_the_environment(tmp_path: Path):
    env = {
        "CNNZOO_IMAGE": "registry.example/cnnzoo:1.2",
        "CNNZOO_SERVER_IMAGE": "registry.example/cnnzoo:1.2-server",
        "CNNZOO_BIND": "0.0.0.0",
        "CNNZOO_GRPC_PORT": "9101",
        "CNNZOO_HTTP_PORT": "9100",
        "CNNZOO_METRICS_PORT": "9102",
        "CNNZOO_SHARED_MEMORY": "system",
        "CNNZOO_DEVICE": "cpu",
        "CNNZOO_EXPORT_FLAGS": "--include-untrained",
        "CNNZOO_DATA": str(tmp_path / "data"),
        "CNNZOO_JOBS": str(tmp_path / "jobs"),
        "CNNZOO_RESULTS": str(tmp_path / "results"),
        "CNNZOO_POLL_SECONDS": "2",
        "CNNZOO_UID": "1000",
        "CNNZOO_GID": "1001",
        "CNNZOO_STOP_GRACE": "45s",
        "CNNZOO_DRAIN_SECONDS": "40",
        "CNNZOO_RELOAD_SECONDS": "7",
        "CNNZOO_START_PERIOD": "5m",
    }
    services = resolve(env=env)["services"]
    server, worker, repository = services["server"], services["worker"], services["repository"]
    assert {repository["image"], worker["image"]} == {"registry.example/cnnzoo:1.2"}
    assert server["image"] == "registry.example/cnnzoo:1.2-server"
    command = server["command"]
    assert command[command.index("--port") + 1] == "9101"
    assert command[command.index("--http-port") + 1] == "9100"
    assert command[command.index("--shared-memory") + 1] == "system"
    assert command[command.index("--metrics-port") + 1] == "9102"
    assert command[command.index("--device") + 1] == "cpu"
    assert command[command.index("--grace-seconds") + 1] == "40"
    assert command[command.index("--poll-seconds") + 1] == "7"
    published = {(p["host_ip"], p["published"], p["target"]) for p in server["ports"]}
    assert published == {
        ("0.0.0.0", "9101", 9101),
        ("0.0.0.0", "9100", 9100),
        ("0.0.0.0", "9102", 9102),
    }
    assert server["healthcheck"]["test"][-1] == "127.0.0.1:9101"
    assert parse_duration(server["healthcheck"]["start_period"]) == 300
    assert server["stop_grace_period"] == worker["stop_grace_period"] == "45s"
    assert repository["command"][-1] == "--include-untrained"
    binds = {v["target"]: v["source"] for v in worker["volumes"] if v["type"] == "bind"}
    assert binds["/jobs"] == env["CNNZOO_JOBS"]
    assert binds["/results"] == env["CNNZOO_RESULTS"]
    assert binds["/data"] == env["CNNZOO_DATA"]
    assert worker["command"][worker["command"].index("--poll-seconds") + 1] == "2"
    assert worker["user"] == "1000:1001"


def test_gpu_override_reserves_a_gpu_and_changes_nothing_else():
    cpu = resolve(env={})["services"]
    gpu = resolve([BASE_FILE, GPU_FILE], env={})["services"]
    assert set(gpu) == SERVICES
    for name, service in gpu.items():
        image = "gpu-server" if name == "server" else "gpu"
        assert service["image"] == f"cnnzoo:{image}"
        assert service["build"]["target"] == image
    for name in ("server", "worker"):
        [device] = _devices(gpu[name])
        assert device["driver"] == "nvidia"
        assert device["capabilities"] == ["gpu"]
        assert device["count"] == 1
    assert not _devices(gpu["repository"])  # exporting needs no GPU

    # The override repeats the server command (compose replaces lists): only the device differs.
    def without_device(command: list[str]) -> list[str]:
        at = command.index("--device")
        return command[:at] + command[at + 2 :]

    assert gpu["server"]["command"][gpu["server"]["command"].index("--device") + 1] == "cuda"
    assert without_device(gpu["server"]["command"]) == without_device(cpu["server"]["command"])
    for key in ("ports", "healthcheck", "depends_on", "volumes", "restart", "stop_grace_period"):
        assert gpu["server"][key] == cpu["server"][key], key
    for name in ("repository", "worker"):
        assert gpu[name]["command"] == cpu[name]["command"]


def test_gpu_count_and_device_are_configurable():
    env = {"CNNZOO_GPU_COUNT": "all", "CNNZOO_DEVICE": "auto"}
    server = resolve([BASE_FILE, GPU_FILE], env=env)["services"]["server"]
    [device] = _devices(server)
    assert device["count"] == -1  # Compose's encoding of "all"
    assert server["command"][server["command"].index("--device") + 1] == "auto"


def test_build_targets_exist_in_the_dockerfile():
    stages = dockerfile_stages()
    targets = {
        service["build"]["target"]
        for files in ([BASE_FILE], [BASE_FILE, GPU_FILE])
        for service in resolve(files, env={})["services"].values()
    }
    assert targets == {"cpu", "gpu", "server", "gpu-server"}
    assert targets <= set(stages)
