"""Browser tests of the web page (actors/server/web): headless Chromium (Playwright) against a real `vidstorm serve`
over a store made by a real `vidstorm ingest --local` of a generated clip."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Locator, Page, sync_playwright

from pipeline.synth import write_clip

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "web-test-token"
TOKEN_KEY = "vidstorm-token"  # the page keeps the token in sessionStorage under this key
CLIP_SECONDS = 24  # configs/test.yaml: 8 frames a chunk at 1 fps -> three 8 s segments


@pytest.fixture(scope="session")
def web_data(tmp_path_factory, tiny_overrides) -> Path:
    """DATA of a real ingest: one stream "cam" (three segments, window and stream summaries, thumbnails),
    a watch rule that alerted on each segment (delivered to a real local webhook receiver), and one job
    spec, so the Jobs page has a schedule to list."""
    from helpers.receiver import Receiver

    folder = tmp_path_factory.mktemp("web")
    data = folder / "data"
    clip = write_clip(folder / "cam.mp4", seconds=CLIP_SECONDS, fps=4)
    command = ["ingest", str(clip), "--local", "--data", str(data), *tiny_overrides]
    with Receiver() as receiver:
        (data / "watch").mkdir(parents=True)
        (data / "watch" / "cam-all.yaml").write_text(
            f"name: cam-all\nquery: anything\nmin_score: -1\nstreams: [cam]\nnotify: ['webhook:{receiver.url}']\n")
        done = subprocess.run([sys.executable, "-m", "actors.cli", *command], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert len(receiver.accepted()) == 3, done.stderr
    (data / "jobs").mkdir(exist_ok=True)
    (data / "jobs" / "nightly.yaml").write_text("name: nightly\nkind: digest\nschedule: '0 3 * * *'\n")
    return data


@dataclass
class Server:
    url: str
    token: str
    log: list[str]

    def get(self, path: str, **params) -> dict:
        """One JSON call with the bearer token (what the tests compare the page against)."""
        answer = httpx.get(self.url + path, params=params, headers={"Authorization": f"Bearer {self.token}"},
                           timeout=30)
        assert answer.status_code == 200, (path, answer.status_code, answer.text)
        return answer.json()


@pytest.fixture(scope="session")
def server(web_data, tiny_overrides):
    """`vidstorm serve` with a token (VIDSTORM_API_TOKEN) on a port the OS picks; stopped by its PID."""
    env = {**os.environ, "VIDSTORM_API_TOKEN": TOKEN}
    command = ["serve", "--port", "0", "--data", str(web_data), *tiny_overrides]
    process = subprocess.Popen([sys.executable, "-m", "actors.cli", *command], cwd=ROOT, env=env,
                               stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []

    def drain():  # read stderr to the end, so a chatty server never blocks on a full pipe
        for line in process.stderr:
            log.append(line)
            lines.put(line)

    threading.Thread(target=drain, daemon=True).start()
    try:
        url = _wait_for_url(process, lines, log)
        served = Server(url, TOKEN, log)
        _wait_until_answering(process, served)
        yield served
    finally:
        os.kill(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def _wait_for_url(process, lines, log, timeout_s: float = 180) -> str:
    """The address from the line `vidstorm serve: http://HOST:PORT (store ...)`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            assert process.poll() is None, f"vidstorm serve exited with {process.returncode}:\n{''.join(log)}"
            continue
        match = re.search(r"http://(\S+?):(\d+)", line)
        if match:
            return f"http://{match.group(1)}:{match.group(2)}"
    raise AssertionError(f"vidstorm serve printed no address within {timeout_s:.0f} s:\n{''.join(log)}")


def _wait_until_answering(process, served: Server, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        log = "".join(served.log)
        assert process.poll() is None, f"vidstorm serve exited with {process.returncode}:\n{log}"
        try:
            if httpx.get(served.url + "/streams", headers={"Authorization": f"Bearer {served.token}"},
                         timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"vidstorm serve never answered /streams:\n{log}"
        time.sleep(0.2)


def chromium_path() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(path, os.X_OK):
        pytest.fail(f"the browser tests need Chromium and there is none at {path}: "
                    "install it (apt-get install chromium)", pytrace=False)
    return path


@pytest.fixture(scope="session")
def browser():
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield launched
        launched.close()


@dataclass
class Tab:
    """A browser tab on the served page, with what its console reported."""

    page: Page
    server: Server
    errors: list[str] = field(default_factory=list)

    def open(self, route: str = "#/streams") -> None:
        self.page.goto(f"{self.server.url}/{route}")

    def wait_for(self, target: Locator) -> Locator:
        """Wait until target shows; fail at once with what the page says if an error or the token form
        shows instead (rather than after a timeout)."""
        error, token_form = self.page.get_by_test_id("error"), self.page.get_by_test_id("token-form")
        target.or_(error).or_(token_form).filter(visible=True).first.wait_for()
        if not target.first.is_visible():
            if error.is_visible():
                raise AssertionError(f"the page shows an error: {error.inner_text()}")
            raise AssertionError(f"the page asks for a token: {token_form.inner_text()}")
        return target

    def assert_no_errors(self, allowed: str | None = None) -> None:
        """No console errors and no uncaught exceptions; `allowed`: a regex of expected ones (a 401 the
        test provokes is logged by Chromium as a failed resource load)."""
        unexpected = [e for e in self.errors if not (allowed and re.search(allowed, e))]
        assert not unexpected, unexpected


def _tab(browser, server, token: str | None) -> Tab:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    if token is not None:
        # seed the token once per tab, as the token form would; a later 401 may still clear it
        # (only on the server's origin: about:blank has no sessionStorage)
        context.add_init_script(
            f"if (location.origin === {server.url!r} && !sessionStorage.getItem('seeded')) {{"
            f" sessionStorage.setItem('seeded', '1'); sessionStorage.setItem({TOKEN_KEY!r}, {token!r}); }}")
    page = context.new_page()
    tab = Tab(page, server)
    page.on("console", lambda message: tab.errors.append(f"console: {message.text}")
            if message.type == "error" else None)
    page.on("pageerror", lambda error: tab.errors.append(f"page error: {error}"))
    return tab


@pytest.fixture
def tab(browser, server):
    """A tab that holds the right token."""
    opened = _tab(browser, server, TOKEN)
    yield opened
    opened.page.context.close()


@pytest.fixture
def tab_with_token(browser, server):
    """tab_with_token(token or None) -> a tab that starts with that token (None: none stored)."""
    opened = []

    def make(token: str | None) -> Tab:
        opened.append(_tab(browser, server, token))
        return opened[-1]

    yield make
    for each in opened:
        each.page.context.close()
