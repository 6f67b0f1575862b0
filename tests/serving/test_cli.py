"""`cnnzoo classify` and `cnnzoo health` as a person runs them, against the shared server."""

from __future__ import annotations

import json
from pathlib import Path

from tests.serving.helpers import DIGITS, MODEL, ServerProcess, cnnzoo, digit_label, free_port


def test_classify_prints_a_table(server):
    result = cnnzoo("classify", *map(str, DIGITS[:4]), "--model", MODEL, "--server",
                    server.target, "--top-k", "2")  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["image", "top-1", "top-2"]
    assert len(lines) == 2 + 4
    for path, line in zip(DIGITS[:4], lines[2:], strict=True):
        assert line.startswith(str(path)) and "%" in line


def test_classify_json(server):
    result = cnnzoo("classify", *map(str, DIGITS), "--model", MODEL, "--server", server.target,
                    "--top-k", "3", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert [item["image"] for item in document] == list(map(str, DIGITS))
    correct = 0
    for path, item in zip(DIGITS, document, strict=True):
        predictions = item["predictions"]
        assert len(predictions) == 3
        assert predictions[0]["probability"] >= predictions[1]["probability"]
        correct += predictions[0]["label"] == digit_label(path)
    assert correct >= 0.9 * len(DIGITS)


def test_classify_errors_are_one_line(server, tmp_path):
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    cases = [
        (["--model", "nope", str(DIGITS[0])], "unknown model 'nope'"),
        (["--model", MODEL, str(DIGITS[0]), str(not_image)], f"{not_image}: not a PNG or JPEG"),
        (["--model", MODEL, str(tmp_path / "missing.png")], "does not exist"),
    ]
    for args, fragment in cases:
        result = cnnzoo("classify", "--server", server.target, *args)
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cnnzoo classify: error:"), result.stderr
        assert fragment in lines[0]


def test_health_exit_codes(server):
    ok = cnnzoo("health", "--server", server.target)
    assert ok.returncode == 0 and ok.stdout.strip() == "SERVING"
    model = cnnzoo("health", "--server", server.target, "--service", MODEL)
    assert model.returncode == 0
    nobody = cnnzoo("health", "--server", f"127.0.0.1:{free_port()}", "--timeout", "2")
    assert nobody.returncode != 0
    assert nobody.stderr.strip().startswith("cnnzoo health: error:"), nobody.stderr


def test_health_of_an_unknown_service_lists_the_ones_there_are(server):
    result = cnnzoo("health", "--server", server.target, "--service", "nope")
    assert result.returncode == 3, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("cnnzoo health: error: the server reports no health for 'nope'")
    for name in ("the whole server", "inference.GRPCInferenceService", "cnnzoo.v1.Zoo", MODEL):
        assert name in line, line


def test_log_level_after_the_command_wins_over_the_environment(tmp_path):
    empty = tmp_path / "empty-repository"
    empty.mkdir()
    process = ServerProcess(
        empty, tmp_path / "server.log", "--log-level", "warning", env={"CNNZOO_LOG_LEVEL": "DEBUG"}
    ).wait_ready()
    assert process.stop() == 0
    log = process.log()
    assert " INFO " not in log and " DEBUG " not in log, log
    assert " WARNING cnnzoo.serving.server: not ready, nothing is served" in log, log


def test_classify_a_folder(server, tmp_path):
    """`cnnzoo classify FOLDER`: every image under it (sub-folders too, in name order), sent a
    batch at a time; other files and hidden ones are left out."""
    folder = tmp_path / "digits"
    for path in DIGITS:
        target = folder / digit_label(path) / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    (folder / "README.txt").write_text("not an image")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "x.png").write_bytes(b"not even a png")
    result = cnnzoo("classify", str(folder), "--model", MODEL, "--server", server.target,
                    "--top-k", "1", "--batch-size", "7", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    expected = sorted(folder / digit_label(p) / p.name for p in DIGITS)
    assert [item["image"] for item in document] == list(map(str, expected))
    correct = sum(
        item["predictions"][0]["label"] == digit_label(Path(item["image"])) for item in document
    )
    assert correct >= 0.9 * len(DIGITS)
    # a folder and a file together; an empty folder is one clear error
    mixed = cnnzoo("classify", str(folder / "3"), str(DIGITS[0]), "--model", MODEL,
                   "--server", server.target)  # fmt: skip
    assert (
        mixed.returncode == 0
        and len(mixed.stdout.splitlines()) == 2 + len(list((folder / "3").glob("*.png"))) + 1
    )
    (tmp_path / "empty").mkdir()
    empty = cnnzoo("classify", str(tmp_path / "empty"), "--model", MODEL, "--server",
                   server.target)  # fmt: skip
    assert empty.returncode == 3
    assert "holds no PNG or JPEG file" in empty.stderr.strip().splitlines()[-1]


def test_a_bad_image_in_a_folder_is_named_by_its_path(server, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, path in enumerate(DIGITS[:9]):
        (folder / f"{i:02d}.png").write_bytes(path.read_bytes())
    (folder / "05b.png").write_text("broken")
    result = cnnzoo("classify", str(folder), "--model", MODEL, "--server", server.target,
                    "--batch-size", "4")  # fmt: skip
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert f"{folder / '05b.png'}: not a PNG or JPEG" in line, line
