"""The gallery in a real headless browser (the system's Chromium, driven by Playwright): every
page opens from disk with no console error, no failed or outside request, no broken image and no
dead link; screenshots of the overview and one channel page are kept with the test's files."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from tests.tools import require_tool

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Every <img> loaded (lazy ones forced to load), each one's natural width.
IMAGE_WIDTHS = """async () => Promise.all(Array.from(document.images).map(async (img) => {
    img.loading = "eager";
    try { await img.decode(); } catch (error) { return [img.src, 0]; }
    return [img.src, img.naturalWidth];
}))"""
LINKS = "() => Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"
IDS = "() => Array.from(document.querySelectorAll('[id]')).map(e => e.id)"


def _local(url: str, folder: Path) -> tuple[Path, str]:
    """The file a file:// URL points at (it must lie in `folder`) and its #fragment."""
    parts = urlsplit(url)
    assert parts.scheme == "file", f"not a local file: {url}"
    path = Path(unquote(parts.path))
    assert path.resolve().is_relative_to(folder.resolve()), f"outside the gallery: {url}"
    return path, parts.fragment


def test_every_page_opens_in_a_real_browser(digits_run: Path, tmp_path_factory) -> None:
    chromium = require_tool(
        "chromium", "install Debian's chromium (apt-get install chromium)", "/usr/bin/chromium"
    )
    from playwright.sync_api import sync_playwright

    pages = sorted(digits_run.glob("*.html"))
    problems: list[str] = []
    requested: list[str] = []
    images: set[str] = set()
    fragments: list[tuple[Path, str, str]] = []  # (page, fragment, from)
    ids: dict[Path, set[str]] = {}
    shots = tmp_path_factory.mktemp("gallery-screenshots")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.on("request", lambda r: requested.append(r.url))
            for html in pages:
                page.goto(html.as_uri(), wait_until="load")
                for src, width in page.evaluate(IMAGE_WIDTHS):
                    images.add(src)
                    if not width:
                        problems.append(f"{html.name}: broken image {src}")
                for href in page.evaluate(LINKS):
                    target, fragment = _local(href, digits_run)
                    if not target.is_file():
                        problems.append(f"{html.name}: dead link {href}")
                    elif fragment:
                        fragments.append((target, fragment, html.name))
                ids[html] = set(page.evaluate(IDS))
                if html.name == "index.html":
                    page.screenshot(path=str(shots / "overview.png"), full_page=True)
                if html.name == "01-max-activations.features.c3.0005.html":
                    page.screenshot(path=str(shots / "channel.png"), full_page=True)
        finally:
            browser.close()
    for target, fragment, origin in fragments:
        if fragment not in ids.get(target, set()):
            problems.append(f"{origin}: no element #{fragment} in {target.name}")
    for url in requested:
        _local(url, digits_run)  # nothing fetched from outside the folder
    assert problems == []
    assert len(pages) == 14 and len(images) >= 40
    for shot in ("overview.png", "channel.png"):
        assert (shots / shot).stat().st_size > 10_000
    print(f"gallery screenshots: {shots}")
