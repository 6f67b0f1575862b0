"""The explorer's latency in a real browser: from choosing an image to every layer's maps drawn,
and from clicking a channel to its projection drawn, measured by the page itself with the
Performance API (`maps-drawn`, `projection-drawn`), in headless Chromium against `cnnzoo serve`
on this machine, for lenet5-mnist and resnet20-cifar10 over 20 images each.

Reference, measured in the same run: the same REST calls the page makes (classify + activations,
and one unit's explain) from Python over the same port, so `page / API` is what the browser's
decoding and drawing add. Targets (median): 300 ms to every layer's maps, 150 ms to a
projection. Prints a table and writes bench/results/explorer_cpu-<cores>cores.json.

    .venv/bin/python bench/explorer.py [--images 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

MODELS = {"lenet5-mnist": ("digits", "features.c3"), "resnet20-cifar10": ("cifar10", "layer2")}
TARGETS = {"maps_ms": 300.0, "projection_ms": 150.0}
CHROMIUM = "/usr/bin/chromium"


def _images(group: str, count: int) -> list[Path]:
    files = sorted((ROOT / "examples" / group).glob("*/*.png"))
    return [files[i % len(files)] for i in range(count)]


def _post(url: str, body: bytes) -> None:
    request = urllib.request.Request(url, data=body, method="POST")
    with urllib.request.urlopen(request, timeout=60) as answer:
        answer.read()


def _api_ms(base: str, model: str, layer: str, image: bytes) -> tuple[float, float]:
    """(classify + activations, one unit's explain), milliseconds, as the page calls them."""
    start = time.perf_counter()
    _post(f"{base}/v2/models/{model}/classify?top_k=1000", image)
    _post(f"{base}/v2/models/{model}/activations", image)
    middle = time.perf_counter()
    _post(f"{base}/v2/models/{model}/explain?method=deconvnet-unit&layer={layer}&channel=0", image)
    return (middle - start) * 1e3, (time.perf_counter() - middle) * 1e3


def _measure(page: Any, name: str) -> float:
    page.wait_for_function(
        f"performance.getEntriesByName('{name}', 'measure').length > 0", timeout=60_000
    )
    value = page.evaluate(f"performance.getEntriesByName('{name}', 'measure').at(-1).duration")
    page.evaluate(f"performance.clearMeasures('{name}')")
    return float(value)


def _page_ms(page: Any, image: Path, layer: str) -> tuple[float, float]:
    page.set_input_files("#file", str(image))
    maps = _measure(page, "maps-drawn")
    page.wait_for_selector("#classes figure")  # let the class view finish before the click
    page.click(f".layer[data-layer='{layer}'] img", position={"x": 2, "y": 2})
    return maps, _measure(page, "projection-drawn")


def run(images: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    from tests.serving.helpers import ServerProcess

    work = Path(tempfile.mkdtemp(prefix="bench-explorer-"))
    repository = work / "repository"
    for model in MODELS:
        subprocess.run(
            [sys.executable, "-m", "cnnzoo", "export", model, "--repository", str(repository)],
            check=True, capture_output=True,
        )  # fmt: skip
    server = ServerProcess(repository, work / "server.log").wait_ready()
    base = f"http://127.0.0.1:{server.http_port}"
    rows = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"{base}/explorer/")
            page.wait_for_function("document.querySelector('#model').value !== ''")
            for model, (group, layer) in MODELS.items():
                page.select_option("#model", model)
                files = _images(group, images)
                _page_ms(page, files[0], layer)  # warm: graphs made, sessions run once
                _api_ms(base, model, layer, files[0].read_bytes())
                page_times = [_page_ms(page, f, layer) for f in files]
                api_times = [_api_ms(base, model, layer, f.read_bytes()) for f in files]
                rows.append(_row(model, layer, page_times, api_times))
            browser.close()
    finally:
        server.stop()
    return {
        "device": f"cpu-{os.cpu_count()}cores",
        "browser": "headless Chromium (Playwright)",
        "images": images,
        "targets_median_ms": TARGETS,
        "rows": rows,
    }


def _row(model: str, layer: str, page: list, api: list) -> dict[str, Any]:
    maps = statistics.median(t[0] for t in page)
    projection = statistics.median(t[1] for t in page)
    api_maps = statistics.median(t[0] for t in api)
    api_projection = statistics.median(t[1] for t in api)
    return {
        "model": model,
        "clicked_layer": layer,
        "maps_ms": round(maps, 1),
        "projection_ms": round(projection, 1),
        "maps_p90_ms": round(sorted(t[0] for t in page)[int(0.9 * (len(page) - 1))], 1),
        "projection_p90_ms": round(sorted(t[1] for t in page)[int(0.9 * (len(page) - 1))], 1),
        "api_maps_ms": round(api_maps, 1),
        "api_projection_ms": round(api_projection, 1),
        "maps_vs_api": round(maps / api_maps, 2),
        "projection_vs_api": round(projection / api_projection, 2),
        "maps_target_met": maps <= TARGETS["maps_ms"],
        "projection_target_met": projection <= TARGETS["projection_ms"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)
    args = parser.parse_args()
    result = run(args.images)
    print("| model | maps drawn (median, p90) | projection drawn (median, p90) | API: maps, "
          "projection | page / API |")  # fmt: skip
    print("|---|---|---|---|---|")
    for r in result["rows"]:
        print(
            f"| {r['model']} | {r['maps_ms']} ms, {r['maps_p90_ms']} ms | {r['projection_ms']} "
            f"ms, {r['projection_p90_ms']} ms | {r['api_maps_ms']} ms, {r['api_projection_ms']} "
            f"ms | {r['maps_vs_api']}, {r['projection_vs_api']} |"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"explorer_{result['device']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
