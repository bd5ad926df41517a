"""Browser tests' helpers: headless Chromium on a URL, and the bundled gRPC-Web client.

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

import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium")

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
