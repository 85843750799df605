"""report.html in headless Chromium: the table and the three charts are laid out, the page logs no errors, and a
screenshot shows something. Needs Debian's `chromium` and `chromium-driver`; skipped without them.

Chromium is driven through chromedriver's W3C WebDriver HTTP API with the standard library (no selenium).
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import pytest

from slimtune.report.render import write_reports

SAMPLE = Path(__file__).parent / "fixtures" / "run_sample.json"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Chromium and chromedriver (Debian: apt-get install -y chromium chromium-driver)",
)
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,2000",
]

# what the page looks like from inside: every chart's SVG with its drawn size, the stage table's rows
PROBE = """
const charts = {};
for (const id of ["chart-loss", "chart-confusion", "chart-tradeoff"]) {
  const svg = document.querySelector("#" + id + " svg");
  const box = svg ? svg.getBoundingClientRect() : null;
  charts[id] = box ? {width: box.width, height: box.height, shapes: svg.querySelectorAll("*").length} : null;
}
const table = document.getElementById("stage-table");
return {charts: charts, stageRows: table ? table.querySelectorAll("tbody tr").length : -1,
        tableWidth: table ? table.getBoundingClientRect().width : 0, title: document.title,
        height: document.documentElement.scrollHeight};
"""


class WebDriver:
    """The few WebDriver commands the test needs, over HTTP to a chromedriver it starts."""

    def __init__(self, user_data_dir: Path):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.session = None
        deadline = time.monotonic() + 20
        while True:
            try:
                if self._call("GET", "/status")["ready"]:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.quit()
                raise RuntimeError("chromedriver did not start")
            time.sleep(0.1)
        options = {"binary": CHROMIUM, "args": [*ARGS, f"--user-data-dir={user_data_dir}"]}
        caps = {
            "browserName": "chrome",
            "goog:chromeOptions": options,
            "goog:loggingPrefs": {"browser": "ALL"},
        }
        try:
            self.session = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})[
                "sessionId"
            ]
        except BaseException:
            self.quit()
            raise

    def _call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as err:
            raise RuntimeError(
                f"WebDriver {method} {path}: {err.read().decode(errors='replace')[:500]}"
            ) from err

    def command(self, method: str, path: str, body: dict | None = None):
        return self._call(method, f"/session/{self.session}{path}", body)

    def open(self, url: str) -> None:
        self.command("POST", "/url", {"url": url})

    def run(self, script: str):
        return self.command("POST", "/execute/sync", {"script": script, "args": []})

    def browser_log(self) -> list[dict]:
        return self.command("POST", "/se/log", {"type": "browser"})

    def screenshot(self) -> bytes:
        return base64.b64decode(self.command("GET", "/screenshot"))

    def quit(self) -> None:
        if self.session:
            try:
                self._call("DELETE", f"/session/{self.session}")
            except (RuntimeError, urllib.error.URLError, ConnectionError):
                pass
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and unfiltered rows of an 8-bit RGB or RGBA PNG, with the standard library."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, f"unexpected PNG format {header}"
    step = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(idat), width * step
    rows, previous = [], bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride) if kind else ():
            left = line[i - step] if i >= step else 0
            up, corner = previous[i], previous[i - step] if i >= step else 0
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            else:  # Paeth
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 255
        rows.append(bytes(line))
        previous = line
    return width, height, rows


def errors_in(log: list[dict]) -> list[str]:
    return [entry["message"] for entry in log if entry.get("level") == "SEVERE"]


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    browser = WebDriver(tmp_path_factory.mktemp("chromium-profile"))
    yield browser
    browser.quit()


def test_report_in_chromium(driver, tmp_path):
    shutil.copy(SAMPLE, tmp_path / "run.json")
    _, html_path = write_reports(tmp_path)
    driver.open(html_path.as_uri())
    page = driver.run(PROBE)
    log = driver.browser_log()
    shot = driver.screenshot()
    (tmp_path / "report.png").write_bytes(shot)

    assert errors_in(log) == [], log
    assert page["title"] == "slimtune report: ok"
    assert page["stageRows"] == 4 and page["tableWidth"] > 600
    for chart, box in page["charts"].items():
        assert box is not None, f"{chart} missing"
        assert box["width"] > 300 and box["height"] > 200 and box["shapes"] > 20, (chart, box)

    width, height, rows = png_pixels(shot)
    assert width >= 1000 and height >= 1000
    colours = {row[i : i + 3] for row in rows[::25] for i in range(0, len(row), 3 * 7)}
    assert len(colours) > 20, f"screenshot has {len(colours)} colours: blank page?"


def test_harness_sees_script_errors_and_missing_charts(driver, tmp_path):
    """The checks above must be able to fail: a page that throws and has no charts is caught."""
    page_path = tmp_path / "broken.html"
    page_path.write_text(
        "<!DOCTYPE html><title>x</title><table id='stage-table'></table>"
        "<script>throw new Error('boom from the page')</script>"
    )
    driver.open(page_path.as_uri())
    page = driver.run(PROBE)
    errors = errors_in(driver.browser_log())
    assert any("boom from the page" in e for e in errors), errors
    assert all(box is None for box in page["charts"].values())


def test_external_resources_are_refused_and_logged(driver, tmp_path):
    """The report's Content-Security-Policy blocks (without fetching) anything not inline, and the browser logs it
    as an error: a report that reached for a CDN would fail the test above."""
    shutil.copy(SAMPLE, tmp_path / "run.json")
    _, html_path = write_reports(tmp_path)
    text = html_path.read_text().replace("</main>", '<img src="https://cdn.example.invalid/x.png"></main>')
    html_path.write_text(text)
    driver.open(html_path.as_uri())
    errors = errors_in(driver.browser_log())
    assert any("Content Security Policy" in e for e in errors), errors
