"""The `cnnzoo` console script itself: the mount, its help and its process-level behaviour."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from cnnzoo.cli import LOG_LEVELS, build_parser
from cnnzoo.errors import EXIT_CODES

ROOT = Path(__file__).resolve().parents[1]

CNNZOO = str(Path(sys.executable).parent / "cnnzoo")
COMMANDS = {"list", "train", "eval", "export", "serve", "classify", "health", "layers", "explain"}
COMMANDS |= {"job", "worker", "examples", "explain-export"}


def test_every_package_mounts_its_commands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == COMMANDS


def test_help_does_not_import_the_heavy_libraries():
    code = (
        "import sys\n"
        "from cnnzoo.cli import build_parser\n"
        "build_parser()\n"
        "heavy = {'torch', 'onnxruntime', 'grpc', 'onnx', 'aiohttp'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_closed_pipe_is_not_a_traceback():
    # `cnnzoo list --json | head -0`: the reader is gone before anything is written
    with subprocess.Popen(
        [CNNZOO, "list", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()
        stderr = process.stderr.read().decode()
        process.wait(timeout=60)
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert process.returncode == 141


def test_help_lists_the_exit_codes_and_the_docs_document_the_same():
    result = subprocess.run([CNNZOO, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    listed = re.findall(r"^  (\d+) +(.+)$", result.stdout.split("exit codes:")[1], re.M)
    assert [(int(code), meaning) for code, meaning in listed] == list(EXIT_CODES)
    page = (ROOT / "docs" / "reference" / "errors.md").read_text()
    documented = page.split("## Exit codes")[1].split("\n#")[0]
    table = re.findall(r"^\| (\d+) \| (.+?) \|$", documented, re.M)
    assert [(int(code), meaning) for code, meaning in table] == list(EXIT_CODES)


def test_every_command_takes_log_level():
    parser = build_parser()
    assert any(a.dest == "log_level" for a in parser._actions)
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, command in sub.choices.items():
        (option,) = [a for a in command._actions if a.dest == "log_level"]
        assert tuple(option.choices) == LOG_LEVELS, name


def test_a_bad_log_level_in_the_environment_is_one_line_and_exit_2():
    env = dict(os.environ, CNNZOO_LOG_LEVEL="loud")
    result = subprocess.run(
        [CNNZOO, "health", "--server", "127.0.0.1:1"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "cnnzoo: error: CNNZOO_LOG_LEVEL='LOUD' is not one of DEBUG, INFO, WARNING, ERROR"
    )
