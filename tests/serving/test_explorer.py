"""The explorer in a real browser (the system's Chromium, driven by Playwright) against a real
`cnnzoo serve`: upload a digit and read its class off the page, open a channel and compare the
projection's pixels with `cnnzoo explain --unit`'s, follow a permalink to a unit with a linked
job's results, take a frame from Chromium's fake camera, and the bad input the page must
survive (a non-image, an image over the server's pixel limit, the server going away and coming
back). No console error and no broken image anywhere; screenshots of each view are kept with
the test's files."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnzoo.cli import main
from cnnzoo.interpret.graphs import projection_png
from cnnzoo.zoo.preprocess import Preprocess
from tests.interpret.test_gallery import CHROMIUM_ARGS, IMAGE_WIDTHS
from tests.serving.helpers import MODEL, ServerProcess
from tests.tools import require_tool

ROOT = Path(__file__).resolve().parents[2]
DIGIT = ROOT / "examples" / "digits" / "7" / "test-00000.png"
MAX_PIXELS = 400_000
CAMERA = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
JOB = f"""
name = "linked"
model = "{MODEL}"
[dataset]
name = "{ROOT / "examples" / "digits"}"
[[analyses]]
kind = "max-activations"
layers = ["features.c3"]
channels = [5]
[[analyses]]
kind = "activation-maximisation"
channels = {{"features.c3" = [5]}}
steps = 5
"""


# A model whose graph the deconvnet cannot follow (a Tanh): its unit projections are refused.
TANH_CONFIG = """name: "tanh-net"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [ { name: "x" data_type: TYPE_FP32 dims: [ 3, 12, 12 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
""" + "".join(
    f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}\n'
    for key, value in Preprocess("RGB", 12, 12, 0, (0.5,) * 3, (0.25,) * 3).to_parameters().items()
)


def _add_tanh_model(root: Path) -> None:
    import onnx
    from torch import nn

    from tests.interpret.graphs.test_export import tiny

    (root / "tanh-net" / "1").mkdir(parents=True)
    onnx.save(tiny(nn.Tanh()), str(root / "tanh-net" / "1" / "model.onnx"))
    (root / "tanh-net" / "config.pbtxt").write_text(TANH_CONFIG)


class Site:
    """The server the page talks to (replaced when a test restarts it) and its folders."""

    def __init__(self, repository: Path, results: Path, logs: Path) -> None:
        self.repository, self.results, self.logs = repository, results, logs
        self.server = self.start()
        self.url = f"http://127.0.0.1:{self.server.http_port}/explorer/"

    def start(self, *ports: str) -> ServerProcess:
        log = self.logs / f"server-{len(list(self.logs.iterdir()))}.log"
        return ServerProcess(
            self.repository, log, "--results", str(self.results),
            "--max-request-pixels", str(MAX_PIXELS), *ports,
        ).wait_ready()  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    repository = tmp_path_factory.mktemp("explorer-repository")
    assert main(["export", MODEL, "--repository", str(repository), "--explanations", "none"]) == 0
    _add_tanh_model(repository)
    job = tmp_path_factory.mktemp("explorer-job")
    (job / "job.toml").write_text(JOB)
    assert main(["job", str(job / "job.toml"), "--out", str(job / "out")]) == 0
    made = Site(repository, job / "out", tmp_path_factory.mktemp("explorer-logs"))
    yield made
    assert made.server.stop() == 0


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("explorer-screenshots")


@pytest.fixture
def browser_page(request: pytest.FixtureRequest):
    """A fresh page of a fresh Chromium; console errors, page errors and failed requests are
    collected and must be none when the test ends (unless it clears them on purpose)."""
    chromium = require_tool(
        "chromium", "install Debian's chromium (apt-get install chromium)", "/usr/bin/chromium"
    )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(chromium), args=[*CHROMIUM_ARGS, *CAMERA]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.problems = []
            page.on("console", lambda m: m.type == "error" and page.problems.append(m.text))
            page.on("pageerror", lambda error: page.problems.append(str(error)))
            yield page
            # (an <img> without a src is a view not opened yet, not a broken picture)
            broken = [src for src, width in page.evaluate(IMAGE_WIDTHS) if src and not width]
            assert not broken, f"broken images: {broken}"
            assert not page.problems, page.problems
        finally:
            browser.close()


def _open(page, site: Site, fragment: str = "") -> None:
    page.goto(site.url + fragment)
    page.wait_for_selector("#model option", state="attached")
    page.wait_for_function("document.querySelector('#model').value !== ''")


def _png_pixels(data_url: str) -> np.ndarray:
    data = base64.b64decode(data_url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def test_a_digit_its_class_and_a_channel_projected_as_cnnzoo_explain_does(
    site: Site, browser_page, shots: Path, tmp_path: Path
) -> None:
    page = browser_page
    _open(page, site)
    page.set_input_files("#file", str(DIGIT))
    page.wait_for_selector("#result:not([hidden])")
    first = page.locator("#top5 tbody tr").first.locator("td")
    assert first.nth(1).inner_text() == "7" and float(first.nth(2).inner_text()) > 0.9
    layers = page.eval_on_selector_all(".layer", "rows => rows.map(r => r.dataset.layer)")
    assert "features.c1" in layers and "features.c3" in layers and len(layers) >= 8
    page.screenshot(path=str(shots / "layers.png"), full_page=True)
    # The strip's first tile is the layer's strongest channel.
    page.click(".layer[data-layer='features.c3'] img", position={"x": 2, "y": 2})
    page.wait_for_selector("#projection[data-unit]")
    layer, channel, where = page.get_attribute("#projection", "data-unit").split("/")
    y, x = where.split(",")
    assert layer == "features.c3"
    saved = tmp_path / "unit.npy"
    code = main([
        "explain", str(DIGIT), "--model", MODEL, "--layer", layer, "--unit", f"{channel}@{y},{x}",
        "--method", "deconvnet", "--out", str(tmp_path / "unit.png"), "--save-map", str(saved),
    ])  # fmt: skip
    assert code == 0
    expected = np.asarray(Image.open(io.BytesIO(projection_png(np.load(saved)))).convert("RGB"))
    shown = _png_pixels(page.get_attribute("#projection", "src"))
    assert np.abs(shown - expected).max() <= 1
    # The unit's receptive field is drawn over the image.
    drawn = page.evaluate(
        "() => { const c = document.querySelector('#field');"
        " return c.getContext('2d').getImageData(0, 0, c.width, c.height).data"
        ".reduce((n, v, i) => n + (i % 4 === 3 && v > 0 ? 1 : 0), 0); }"
    )
    assert drawn > 0
    page.wait_for_selector("#classes figure img")
    assert page.locator("#classes figure img").count() == 3
    page.screenshot(path=str(shots / "unit.png"), full_page=True)


def test_a_permalink_reopens_a_unit_with_the_linked_job(
    site: Site, browser_page, shots: Path
) -> None:
    page = browser_page
    fragment = (
        f"#model={MODEL}&version=1&image=digits/7/test-00000.png&layer=features.c3&channel=5"
        "&method=guided-backprop-unit&target=3"
    )
    _open(page, site, fragment)
    page.wait_for_selector("#projection[data-unit]")
    assert page.inner_text("#unit-title") == "features.c3, channel 5"
    assert page.is_checked("input[name=rule][value=guided-backprop-unit]")
    assert page.input_value("#target") == "3"
    page.wait_for_selector("#linked:not([hidden]) img")
    pictures = page.eval_on_selector_all("#linked img", "imgs => imgs.map(i => i.src)")
    assert len(pictures) == 2 and all("/explorer/results/" in src for src in pictures)
    assert "layer=features.c3" in page.url and "channel=5" in page.url
    page.wait_for_selector("#classes figure img")
    page.click("#occlusion")
    page.wait_for_function("document.querySelectorAll('#classes figure img').length === 4")
    page.screenshot(path=str(shots / "permalink.png"), full_page=True)


def test_a_frame_from_the_webcam(site: Site, browser_page) -> None:
    page = browser_page
    _open(page, site)
    page.click("#webcam")
    page.wait_for_function("document.querySelector('#video').readyState >= 2")
    page.click("#snap")
    page.wait_for_selector("#result:not([hidden])")
    assert page.locator("#top5 tbody tr").count() == 5
    assert page.locator(".layer img").count() >= 8


def test_bad_input_is_said_on_the_page_and_the_page_carries_on(
    site: Site, browser_page, tmp_path: Path
) -> None:
    page = browser_page
    _open(page, site)
    assert page.inner_text("#pixel-limit") == f"{MAX_PIXELS:,}"
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    page.set_input_files("#file", str(text))
    page.wait_for_selector("#status.error")
    assert "could not be explored" in page.inner_text("#status")
    huge = tmp_path / "huge.png"
    Image.new("L", (700, 700), 128).save(huge)
    page.set_input_files("#file", str(huge))
    page.wait_for_function("document.querySelector('#status').textContent.includes('pixels')")
    assert "--max-request-pixels" in page.inner_text("#status")
    page.set_input_files("#file", str(DIGIT))  # and a good one still works
    page.wait_for_selector("#result:not([hidden])")
    page.wait_for_function("document.querySelector('#status').hidden")
    page.problems.clear()  # the two refusals are logged by the browser as failed loads


def test_a_model_the_deconvnet_cannot_follow_is_said_on_the_page(site: Site, browser_page) -> None:
    page = browser_page
    _open(page, site, "#model=tanh-net&image=cifar10/cat/test-00018.png")
    page.wait_for_selector("#result:not([hidden])")
    assert page.locator(".layer img").count() >= 3  # its maps need no backward rule
    page.click(".layer img >> nth=0", position={"x": 2, "y": 2})
    page.wait_for_selector("#status.error")
    said = page.inner_text("#status")
    assert "Tanh" in said and "ReLU only" in said and "grad-cam" in said
    page.wait_for_selector("#classes figure img")  # Grad-CAM still answers
    page.problems.clear()  # the refusal is logged by the browser as a failed load


def test_the_server_going_away_and_coming_back(site: Site, browser_page, shots: Path) -> None:
    page = browser_page
    _open(page, site, f"#model={MODEL}&image=digits/7/test-00000.png")
    page.wait_for_selector("#result:not([hidden])")
    ports = ("--port", str(site.server.port), "--http-port", str(site.server.http_port))
    assert site.server.stop() == 0
    page.click(".layer[data-layer='features.c1'] img", position={"x": 2, "y": 2})
    page.wait_for_selector("#status.error")
    assert "not answering" in page.inner_text("#status")
    page.screenshot(path=str(shots / "server-away.png"), full_page=True)
    site.server = site.start(*ports)
    page.wait_for_function(
        "document.querySelector('#status').textContent.includes('back')", timeout=60_000
    )
    page.wait_for_selector("#projection[data-unit^='features.c1/']")
    page.problems.clear()  # the refused connections are logged by the browser
