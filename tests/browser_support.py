"""Browser tests' helpers: headless Chromium on a URL, and the bundled gRPC-Web client.

:func:`bundle_grpc_web` (and the session fixture :func:`grpc_web_bundle`)
turns tests/browser/ into one JavaScript file: ``npm ci`` installs the
pinned grpc-web, google-protobuf and esbuild of tests/browser/package-lock.json
into a folder of pytest's cache (under the checkout's .pytest_cache, named
by a hash of the inputs, so it is done once), then esbuild bundles
tests/browser/grpc_web_client.js.  A test using it is skipped, saying why,
when npm or Node.js is missing or ``npm ci`` fails (no registry).  The
page tests/browser/grpc_web_page.html loads the bundle; its query string
says what to call (see the script's header).

:func:`chromium_dom` opens a URL in headless Chromium and returns the DOM
once the page says it is done: its script sets ``data-done`` on ``<body>``
(``document.body.dataset.done = "1"``) when its work (a WebSocket echo, a
gRPC-Web call) has ended, well or badly.  ``chromium --dump-dom`` cannot be
used for such pages: it dumps at the load event, and with
``--virtual-time-budget`` the budget runs out while WebSocket frames are
still on their way (seen with Chromium 156: the echo missing in one run of
five).  So Chromium is driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: commands on fd 3, answers and events on fd 4,
each a JSON text ended by a NUL byte).
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium")
BROWSER = Path(__file__).resolve().parent / "browser"
#: The files the bundle is made from (its cache folder is named by their hash).
BUNDLE_INPUTS = ("package.json", "package-lock.json", "grpc_web_client.js")
#: The bundle's name, as tests/browser/grpc_web_page.html loads it.
BUNDLE_NAME = "grpc_web_client.js"
NPM_TIMEOUT = 300.0

#: What a page sets when it is done, and what :func:`chromium_dom` waits for.
DONE = "document.body !== null && document.body.dataset.done === '1'"


class _DevTools:
    """A DevTools protocol client on the pipes of one Chromium process."""

    def __init__(self, commands: int, answers: int, deadline: float) -> None:
        self.commands = commands
        self.answers = answers
        self.deadline = deadline
        self.buffer = b""
        self.next_id = 0

    def _message(self) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            left = self.deadline - time.monotonic()
            assert left > 0, "Chromium did not answer in time"
            ready, _, _ = select.select([self.answers], [], [], left)
            if ready:
                chunk = os.read(self.answers, 65536)
                assert chunk, "Chromium closed its DevTools pipe"
                self.buffer += chunk
        text, _, self.buffer = self.buffer.partition(b"\0")
        message: dict[str, Any] = json.loads(text)
        return message

    def send(self, method: str, session: str | None = None, **params: Any) -> None:
        """Send one command, not waiting for its answer."""
        self.next_id += 1
        command: dict[str, Any] = {
            "id": self.next_id,
            "method": method,
            "params": params,
        }
        if session is not None:
            command["sessionId"] = session
        os.write(self.commands, json.dumps(command).encode() + b"\0")

    def call(self, method: str, session: str | None = None, **params: Any) -> Any:
        """Send one command and return its result (events meanwhile are dropped)."""
        self.send(method, session, **params)
        while True:
            message = self._message()
            if message.get("id") == self.next_id:
                assert "error" not in message, (method, message["error"])
                return message.get("result", {})


def chromium_dom(url: str, ready: str = DONE, timeout: float = 30.0) -> str:
    """The DOM of ``url`` in headless Chromium once ``ready`` (a JavaScript
    expression) is true, polled every 50 ms for at most ``timeout`` seconds;
    an ``AssertionError`` with the DOM so far if it never is."""
    assert CHROMIUM is not None, "needs Debian's chromium"
    deadline = time.monotonic() + timeout
    to_chromium, commands = os.pipe()
    answers, from_chromium = os.pipe()

    def pipes_as_3_and_4() -> None:  # in the child, before exec
        os.dup2(to_chromium, 3)
        os.dup2(from_chromium, 4)

    with tempfile.TemporaryDirectory(prefix="txcmux-chromium-") as profile:
        process = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-pipe",
                f"--user-data-dir={Path(profile)}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=pipes_as_3_and_4,
            close_fds=False,
        )
        os.close(to_chromium)
        os.close(from_chromium)
        try:
            return _dom(_DevTools(commands, answers, deadline), url, ready)
        finally:
            os.close(commands)
            os.close(answers)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _dom(devtools: _DevTools, url: str, ready: str) -> str:
    targets = devtools.call("Target.getTargets")["targetInfos"]
    page = next(t["targetId"] for t in targets if t["type"] == "page")
    session = devtools.call("Target.attachToTarget", targetId=page, flatten=True)[
        "sessionId"
    ]

    def evaluate(expression: str) -> Any:
        result = devtools.call(
            "Runtime.evaluate", session, expression=expression, returnByValue=True
        )
        return result["result"].get("value")

    devtools.call("Page.navigate", session, url=url)
    html = "document.documentElement ? document.documentElement.outerHTML : ''"
    try:
        while not evaluate(ready):
            if time.monotonic() > devtools.deadline - 1:
                raise AssertionError(f"{url} never became ready:\n{evaluate(html)}")
            time.sleep(0.05)
        dom: str = evaluate(html)
        return dom
    finally:
        devtools.send("Browser.close")


# -- the gRPC-Web client bundle ------------------------------------------------


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def bundle_grpc_web(cache: Path) -> Path:
    """tests/browser/grpc_web_client.js bundled with its npm packages: the path
    of the one JavaScript file, made under ``cache`` (reused while the inputs
    are unchanged).  Skips the test when npm cannot install the packages."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.skip("the gRPC-Web browser tests need npm and Node.js (Debian's npm)")
    digest = hashlib.sha256()
    for name in BUNDLE_INPUTS:
        digest.update(name.encode() + b"\0" + (BROWSER / name).read_bytes())
    work = cache / f"grpc-web-{digest.hexdigest()[:16]}"
    bundle = work / "out" / BUNDLE_NAME
    if bundle.exists():
        return bundle
    work.mkdir(parents=True, exist_ok=True)
    for name in BUNDLE_INPUTS:
        shutil.copy(BROWSER / name, work / name)
    if not (work / "node_modules" / ".package-lock.json").exists():
        command = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"]
        command += ["--cache", str(cache / "npm-cache")]
        try:
            installed = subprocess.run(
                command, cwd=work, capture_output=True, text=True, timeout=NPM_TIMEOUT
            )
        except subprocess.TimeoutExpired:
            pytest.skip(
                f"npm ci took over {NPM_TIMEOUT:g} s (is the registry reachable?)"
            )
        if installed.returncode != 0:
            pytest.skip(
                "npm ci failed (is the npm registry reachable?):\n"
                + _tail(installed.stderr)
            )
    partial = work / "out" / (BUNDLE_NAME + ".partial")
    bundled = subprocess.run(
        [
            node,
            str(work / "node_modules" / "esbuild" / "bin" / "esbuild"),
            BUNDLE_NAME,
            "--bundle",
            "--format=iife",
            "--target=es2020",
            f"--outfile={partial}",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bundled.returncode == 0, bundled.stderr
    partial.replace(bundle)  # whole or not at all
    return bundle


@pytest.fixture(scope="session")
def grpc_web_bundle(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The bundled gRPC-Web client (see :func:`bundle_grpc_web`), in pytest's
    cache (or a temporary folder when the cache is off)."""
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        folder = Path(cache.mkdir("txcmux-browser"))
    else:
        folder = tmp_path_factory.mktemp("txcmux-browser")
    return bundle_grpc_web(folder)


def grpc_web_page_files(bundle: Path, destination: Path) -> None:
    """Put the harness page and the bundle in ``destination``, to be served
    side by side (the page loads ``grpc_web_client.js`` from its folder)."""
    shutil.copy(BROWSER / "grpc_web_page.html", destination / "grpc_web_page.html")
    shutil.copy(bundle, destination / BUNDLE_NAME)


def dom_result(dom: str, element: str = "result") -> Any:
    """The JSON a page wrote into ``<pre id="result">``, decoded."""
    found = re.search(rf'<pre id="{element}">(.*?)</pre>', dom, re.S)
    assert found is not None, dom[-3000:]
    return json.loads(html.unescape(found.group(1)))
