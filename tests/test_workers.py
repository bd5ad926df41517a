"""``workers = N``: a real twistd supervisor, its worker processes, real clients.

Each response of the test site names the worker process that served it, so
the tests see which worker took a connection, that a killed worker comes
back, that SIGHUP reloads every worker and that SIGTERM lets a download in
flight finish in the worker serving it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.test_twistd import (
    Running,
    assert_clean_exit,
    run_twistd,
    start_twistd,  # noqa: F401  (the fixture)
    twistd_command,
)

SITE = '''
import os

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET


class Pid(Resource):
    isLeaf = True

    def render_GET(self, request):
        return f"{os.getpid()}\\n".encode()


class Slow(Resource):
    """Ten chunks, one every 0.2 s, then the worker's pid."""

    isLeaf = True

    def render_GET(self, request):
        def chunk(left):
            if request.finished or request._disconnected:
                return
            if left == 0:
                request.write(f"{os.getpid()}\\n".encode())
                request.finish()
                return
            request.write(b"x" * 1000)
            reactor.callLater(0.2, chunk, left - 1)

        chunk(10)
        return NOT_DONE_YET


def resource():
    root = Resource()
    root.putChild(b"pid", Pid())
    root.putChild(b"slow", Slow())
    return root
'''

CONFIG = """
listen = ["tcp:0:interface=127.0.0.1"]
workers = 2
drain_timeout = 10

[admin]
listen = "tcp:0:interface=127.0.0.1"

[[route]]
name = "web"
match = ["http1", "http2"]
web = "worker_site:resource"
"""

DEADLINE = 20.0


def get(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def admin_port(running: Running) -> int:
    line = next(
        line
        for line in running.log.read_text().splitlines()
        if "workers listening on" in line
    )
    return int(line.rsplit("admin on 127.0.0.1:", 1)[1].split()[0])


def status(admin: int) -> dict[str, Any]:
    return json.loads(get(f"http://127.0.0.1:{admin}/status.json"))  # type: ignore[no-any-return]


def wait_for(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.1)


@pytest.fixture
def workers(
    tmp_path: Path,
    start_twistd: Callable[..., Running],  # noqa: F811 (the imported fixture)
) -> tuple[Running, int, Path]:
    (tmp_path / "worker_site.py").write_text(SITE)
    config = tmp_path / "cmux.toml"
    config.write_text(CONFIG)
    running = start_twistd("--config", str(config))
    return running, admin_port(running), config


def worker_pids(running: Running) -> set[int]:
    """The pids answering on the port, from at most 200 connections."""
    seen: set[int] = set()
    for _ in range(200):
        seen.add(int(get(f"http://127.0.0.1:{running.port}/pid")))
        if len(seen) == 2:
            break
    return seen


def test_two_workers_share_the_port(workers: tuple[Running, int, Path]) -> None:
    running, admin, _ = workers
    pids = worker_pids(running)
    assert len(pids) == 2 and running.process.pid not in pids
    listed = status(admin)
    assert {w["pid"] for w in listed["workers"]} == pids
    assert all(w["state"] == "ready" for w in listed["workers"])
    assert listed["supervisor"]["pid"] == running.process.pid
    assert get(f"http://127.0.0.1:{admin}/readyz") == "ready\n"

    # /metrics gathers both workers, each labelled.
    text = get(f"http://127.0.0.1:{admin}/metrics")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    accepted = {
        s.labels["worker"]: s.value
        for s in families["txcmux_connections_accepted"].samples
    }
    assert set(accepted) == {"0", "1"}
    assert sum(accepted.values()) >= 2
    assert {s.labels["worker"] for s in families["txcmux_worker_up"].samples} == {
        "0",
        "1",
    }
    page = get(f"http://127.0.0.1:{admin}/")
    assert "txcmux supervisor" in page and str(min(pids)) in page
    assert_clean_exit(running, running.stop())


def test_a_killed_worker_comes_back(workers: tuple[Running, int, Path]) -> None:
    running, admin, _ = workers
    before = {w["index"]: w["pid"] for w in status(admin)["workers"]}
    os.kill(before[0], signal.SIGKILL)

    def back() -> bool:
        worker = status(admin)["workers"][0]
        return worker["state"] == "ready" and worker["pid"] != before[0]

    wait_for("worker 0 is back with a new pid", back)
    again = status(admin)["workers"]
    assert again[0]["restarts"] == 1 and again[0]["last_exit"] == "signal 9"
    assert again[1]["pid"] == before[1] and again[1]["restarts"] == 0
    assert worker_pids(running) == {again[0]["pid"], before[1]}
    output = running.stop()
    assert "worker 0 (pid" in output and "ended unexpectedly (signal 9" in output
    assert_clean_exit(running, output)


def test_sighup_reloads_every_worker(workers: tuple[Running, int, Path]) -> None:
    running, admin, config = workers
    config.write_text(CONFIG.replace('["http1", "http2"]', '["http1"]'))
    running.process.send_signal(signal.SIGHUP)

    def reloaded() -> bool:
        return all(
            (w["last_reload"] or "").startswith("reloaded")
            for w in status(admin)["workers"]
        )

    wait_for("both workers reloaded", reloaded)
    for worker in status(admin)["workers"]:
        [route] = worker["status"]["routes"]
        assert route["matchers"] == ["http1"]

    # A change the workers cannot make alone is refused, in each of them.
    config.write_text(CONFIG.replace("tcp:0:interface=127.0.0.1", "tcp:0", 1))
    running.process.send_signal(signal.SIGHUP)
    wait_for(
        "both workers refused",
        lambda: all(
            (w["last_reload"] or "").startswith("refused")
            for w in status(admin)["workers"]
        ),
    )
    assert "takes effect after a restart" in status(admin)["workers"][0]["last_reload"]
    assert_clean_exit(running, running.stop())


def test_sigterm_drains_every_worker(workers: tuple[Running, int, Path]) -> None:
    running, admin, _ = workers
    pids = {w["pid"] for w in status(admin)["workers"]}
    results: list[str] = []
    downloads = [
        threading.Thread(
            target=lambda: results.append(
                get(f"http://127.0.0.1:{running.port}/slow", timeout=30)
            )
        )
        for _ in range(4)
    ]
    for download in downloads:
        download.start()
    time.sleep(0.5)  # the downloads are under way (2 s each)
    running.process.send_signal(signal.SIGTERM)
    for download in downloads:
        download.join(timeout=30)
    assert len(results) == 4
    assert all(r.startswith("x" * 10000) and int(r[10000:]) in pids for r in results)
    running.process.wait(timeout=30)
    assert running.process.returncode == 0
    for pid in pids:
        wait_for(f"worker {pid} exited", lambda pid=pid: not _alive(pid))  # type: ignore[misc]
    output = running.log.read_text()
    assert output.count("txcmux: drained: every connection finished") == 2
    assert "txcmux: stopped" in output


def test_workers_stop_when_the_supervisor_dies(
    workers: tuple[Running, int, Path],
) -> None:
    running, admin, _ = workers
    pids = {w["pid"] for w in status(admin)["workers"]}
    running.process.kill()
    running.process.wait(timeout=30)
    for pid in pids:
        wait_for(f"worker {pid} stopped", lambda pid=pid: not _alive(pid))  # type: ignore[misc]
    assert running.log.read_text().count("the supervisor is gone; stopping") == 2


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie, reaped by init or not, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("workers = 0", 'key "workers": found the integer 0, expected a positive'),
        ('workers = "2"', 'key "workers": found the string "2"'),
    ],
)
def test_bad_workers_values(tmp_path: Path, change: str, expected: str) -> None:
    (tmp_path / "worker_site.py").write_text(SITE)
    config = tmp_path / "cmux.toml"
    config.write_text(CONFIG.replace("workers = 2", change))
    result = run_twistd(["cmux", "--check", "--config", str(config)], tmp_path)
    assert result.returncode == 1
    assert expected in result.stderr and "Traceback" not in result.stderr


def test_workers_need_the_foreground(tmp_path: Path) -> None:
    (tmp_path / "worker_site.py").write_text(SITE)
    config = tmp_path / "cmux.toml"
    config.write_text(CONFIG)
    result = subprocess.run(
        [
            *twistd_command(),
            f"--pidfile={tmp_path / 'twistd.pid'}",
            f"--logfile={tmp_path / 'twistd.log'}",
            "cmux",
            "--config",
            str(config),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert 'key "workers": the workers log to twistd\'s output' in result.stderr
    assert not (tmp_path / "twistd.pid").exists()


def test_sigterm_while_a_worker_waits_to_be_restarted(
    workers: tuple[Running, int, Path],
) -> None:
    running, admin, _ = workers
    first = status(admin)["workers"][0]["pid"]
    os.kill(first, signal.SIGKILL)
    wait_for(
        "the supervisor to schedule the restart",
        lambda: "restarting it in" in running.log.read_text(),
    )
    running.process.send_signal(signal.SIGTERM)  # within the 0.5 s delay
    running.process.wait(timeout=30)
    output = running.log.read_text()
    assert running.process.returncode == 0, output
    assert "Traceback" not in output
    assert output.count("worker 0 started (pid") == 1  # not started again
    # The other worker drained on the supervisor's word, not for want of it.
    assert "draining: SIGTERM sent to 1 workers" in output
    assert "the supervisor is gone" not in output
