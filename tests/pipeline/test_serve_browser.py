"""``mmx serve`` in a real headless browser: Debian's chromium driven through its chromedriver (Selenium).

``mmx serve`` runs as a user starts it (a subprocess on a free 127.0.0.1 port) on the demo's
quad-modal run; the page is used as a person would: type a query, see the results grid,
play an audio and a video hit, upload an image. Screenshots go to tmp_path and are checked
(not blank, results drawn). Every wait is bounded; the server and browser are stopped at
the end whatever happens. Skips with the reason when chromium, chromedriver or Selenium is
missing (.ci/run installs chromium and chromium-driver).
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="mmx serve needs the 'serve' extra: pip install 'mmx[serve]'")
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (the 'test' extra)")

CHROMIUM = os.environ.get("MMX_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MMX_CHROMEDRIVER", "/usr/bin/chromedriver")
WAIT = 120  # seconds for any one thing the page does (the machine may be loaded)

pytestmark = pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                                reason=f"no {CHROMIUM} / {CHROMEDRIVER}: apt-get install chromium chromium-driver")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(readme_demo, tmp_path_factory):
    """``mmx serve`` as a subprocess; yields its base URL and the demo's fetched manifest."""
    import httpx

    root, outcome, result = readme_demo
    assert outcome.exit_code == 0 and not outcome.error, outcome.output + outcome.error
    run = (root / result["runs"]["quad-modal"]).resolve()
    manifest = (root / result["fetch"].layout.manifest).resolve()
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    mmx = [sys.executable, "-c", "from mmx.pipeline.cli import main; main()"]
    with open(log, "wb") as out:
        proc = subprocess.Popen([*mmx, "serve", str(run), "--manifest", str(manifest), "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=root)  # the run names its cache relative to it
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT
        while True:
            assert proc.poll() is None, f"mmx serve exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"mmx serve did not answer in {WAIT}s: {log.read_text()}"
            try:
                if httpx.get(base + "/api/info", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert f"at {base}/" in log.read_text()  # it says where to open it
        yield base, manifest
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium look for a browser or driver online
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--autoplay-policy=no-user-gesture-required", "--mute-audio",
                 "--window-size=1280,1000", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT, poll_frequency=0.2).until(condition)
    except Exception:
        status = driver.find_element("id", "status").text
        raise AssertionError(f"{what} did not happen in {WAIT}s (page status: {status!r})") from None


def _shot(driver, path: Path) -> Path:
    """A screenshot that shows something: many distinct colours and no single colour over 97% of it."""
    import numpy as np
    from PIL import Image

    driver.save_screenshot(str(path))
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    assert len(colours) > 50 and counts.max() < 0.97 * len(pixels), f"{path} looks blank"
    return path


def _set_targets(driver, wanted: set[str]):
    for box in driver.find_elements("css selector", "#targets input"):
        if box.is_selected() != (box.get_attribute("value") in wanted):
            box.click()


def _hits(driver):
    return driver.find_elements("css selector", "#results .hit")


def _fresh(driver):
    """Clear the status line and the grid, so a wait sees the next answer and not the last one."""
    driver.execute_script("document.getElementById('status').textContent = '';"
                          "document.getElementById('results').replaceChildren();")


def _search_text(driver, text: str):
    box = driver.find_element("id", "text")
    box.clear()
    box.send_keys(text)
    _fresh(driver)
    driver.find_element("id", "text-go").click()
    _wait(driver, lambda d: d.find_element("id", "status").text.startswith(f'{len(_hits(d))} hits for "{text}"')
          and _hits(d), f"results for {text!r}")


def _plays(driver, tag: str) -> dict:
    """Load and play the first ``tag`` element of the results; what the page says about it."""
    return driver.execute_async_script(f"""
        const done = arguments[arguments.length - 1];
        const el = document.querySelector('#results .hit {tag}');
        if (!el) return done({{error: 'no {tag} element'}});
        const report = () => ({{readyState: el.readyState, duration: el.duration, currentTime: el.currentTime,
                               paused: el.paused, error: el.error && el.error.code, src: el.currentSrc}});
        el.muted = true;
        const started = Date.now();
        el.play().catch((e) => null);
        (function poll() {{
            if (el.readyState >= 2 && el.currentTime > 0) return done(report());
            if (el.error || Date.now() - started > 60000) return done(report());
            setTimeout(poll, 100);
        }})();
    """)


def test_the_page_searches_plays_and_uploads(server, browser, tmp_path):
    base, manifest = server
    browser.get(base + "/")
    _wait(browser, lambda d: d.find_element("id", "status").text == "ready", "the page's start")
    assert {b.get_attribute("value") for b in browser.find_elements("css selector", "#targets input")} == \
        {"text", "image", "audio", "video"}
    assert len(browser.find_elements("css selector", "#like option")) > 10

    # a typed query: a grid of results with scores, labels and thumbnails
    _search_text(browser, "a spoken seven")
    hits = _hits(browser)
    assert len(hits) == 12 and all(h.is_displayed() for h in hits)
    scores = [float(h.find_element("css selector", ".score").text) for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(h.find_element("css selector", ".label").text for h in hits)
    images = browser.find_elements("css selector", "#results .hit img")
    assert images, "no image among the hits"
    _wait(browser, lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i)
                                 for i in images), "the thumbnails' loading")
    text_shot = _shot(browser, tmp_path / "serve-text-query.png")

    # audio and video hits load and play
    for tag in ("audio", "video"):
        _set_targets(browser, {tag})
        _search_text(browser, "seven")
        assert {h.get_attribute("class").split()[-1] for h in _hits(browser)} == {tag}
        state = _plays(browser, tag)
        assert not state.get("error") and state["readyState"] >= 2 and state["duration"] > 0, (tag, state)
        assert state["currentTime"] > 0, (tag, state)
        assert state["src"].startswith(base + "/media/")
    video_shot = _shot(browser, tmp_path / "serve-video-results.png")

    # an upload: an image of the gallery comes back first
    _set_targets(browser, {"image"})
    with open(manifest, newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["modality"] == "image" and r["split"] == "test" and r["uri"])
    browser.find_element("id", "file").send_keys(str(manifest.parent / row["uri"]))
    _fresh(browser)
    browser.find_element("id", "file-go").click()
    name = Path(row["uri"]).name
    _wait(browser, lambda d: d.find_element("id", "status").text.endswith(f"hits for {name}"), "the upload's results")
    first = _hits(browser)[0]
    assert first.find_element("css selector", ".id").text.endswith(row["id"])
    assert float(first.find_element("css selector", ".score").text) > 0.999
    upload_shot = _shot(browser, tmp_path / "serve-upload.png")

    # "more like this" on a hit, and a refused upload shows its one-line error
    browser.execute_script("document.getElementById('status').textContent = '';")
    first.find_element("css selector", "button").click()
    _wait(browser, lambda d: d.find_element("id", "status").text.endswith(f"like {row['id']}"), "the like-query")
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    browser.find_element("id", "file").send_keys(str(bad))
    _fresh(browser)
    browser.find_element("id", "file-go").click()
    _wait(browser, lambda d: "first bytes" in d.find_element("id", "status").text, "the refusal")
    assert browser.find_element("id", "status").get_attribute("class") == "error"

    keep = os.environ.get("MMX_SCREENSHOTS")
    if keep:  # to look at them: MMX_SCREENSHOTS=folder pytest tests/pipeline/test_serve_browser.py
        Path(keep).mkdir(parents=True, exist_ok=True)
        for shot in (text_shot, video_shot, upload_shot):
            shutil.copy(shot, Path(keep) / shot.name)
