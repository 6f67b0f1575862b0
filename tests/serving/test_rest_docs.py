"""docs/rest.md's examples run as written against a server of the shipped LeNet-5 (a repository
of that one model, as the page starts one): every `$` command of its
`console` blocks (curl, the REST classify example on a shipped digit), in order, in a scratch
folder, with the documented address replaced by the server's. Each must exit 0 and print the
lines shown under it (decimal numbers compared to one decimal place, as ONNX Runtime's last
digits differ between CPUs)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

from tests.serving.helpers import MODEL, ROOT, ServerProcess
from tests.tools import require_tool

DOC = ROOT / "docs" / "rest.md"
DOCUMENTED_URL = "http://127.0.0.1:8000"


def console_blocks(text: str) -> list[list[tuple[str, list[str]]]]:
    """Per ```console block, its (command, shown output lines) pairs."""
    blocks = []
    for body in re.findall(r"```console\n(.*?)```", text, re.DOTALL):
        steps: list[tuple[str, list[str]]] = []
        for line in body.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            elif steps:
                steps[-1][1].append(line)
        blocks.append(steps)
    return blocks


def rounded(line: str) -> str:
    return re.sub(r"\d+\.\d+", lambda m: f"{float(m.group()):.1f}", line)


def test_the_documented_rest_examples_run_and_print_what_is_shown(repository, tmp_path):
    require_tool("curl", "install curl (the examples use it)")
    models = tmp_path / "model_repository"
    shutil.copytree(repository / MODEL, models / MODEL)
    server = ServerProcess(models, tmp_path / "server.log").wait_ready()
    try:
        run_console_blocks(server, tmp_path / "work")
    finally:
        assert server.stop() == 0, server.log()


def run_console_blocks(server: ServerProcess, work) -> None:
    work.mkdir()
    blocks = console_blocks(DOC.read_text())
    commands = [command for block in blocks for command, _ in block]
    assert len(commands) >= 5, commands
    assert any("examples/rest_classify.py examples/digits/" in c for c in commands)
    (work / "examples").symlink_to(ROOT / "examples")
    url = f"http://127.0.0.1:{server.http_port}"
    for block in blocks:
        for command, shown in block:
            runnable = command.replace(DOCUMENTED_URL, url)
            if runnable.startswith("python "):
                runnable = f"{shutil.which(sys.executable) or sys.executable} {runnable[7:]}"
            done = subprocess.run(
                ["bash", "-o", "pipefail", "-c", runnable],
                cwd=work,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, (command, done.stdout, done.stderr)
            printed = done.stdout.splitlines()
            assert [rounded(line) for line in printed] == [rounded(line) for line in shown], (
                command,
                done.stdout,
            )
