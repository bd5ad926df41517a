"""The benchmark suite still runs: ``python -m benchmarks --quick`` end to end.

Runs every scenario once, briefly, as a subprocess and checks that each one
produced a number on both sides, that the absolute costs were measured, and
that every installed peer (HAProxy, sslh, Go cmux) got its rows.  No timing
is asserted: this machine is shared, and the point is that the suite never
rots.  Needs wrk and h2load (skipped without them); each peer's checks are
skipped, with the reason, where the peer is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import peers
from benchmarks.run import AGAINST, SCENARIOS, SIDE_TITLES

ROOT = Path(__file__).resolve().parent.parent

needs_load_generators = pytest.mark.skipif(
    shutil.which("wrk") is None or shutil.which("h2load") is None,
    reason="the benchmarks need wrk and h2load",
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """One ``--quick`` run of everything: (its --json results, its stdout)."""
    results_file = tmp_path_factory.mktemp("bench") / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(results_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(results_file.read_text()), done.stdout


@needs_load_generators
def test_quick_run_measures_every_scenario(
    quick_run: tuple[dict[str, Any], str],
) -> None:
    results, stdout = quick_run
    by_name = {r["name"]: r for r in results["results"]}
    assert sorted(by_name) == sorted(sc.name for sc in SCENARIOS)
    for name, result in by_name.items():
        assert result["error"] is None, (name, result["error"])
        assert len(result["direct"]) == len(result["through"]) == 1, name
        assert result["direct"][0] > 0 and result["through"][0] > 0, name
        assert result["ratio"] > 0, name
        # Server CPU per request (or MiB) was measured on both sides.
        assert result["direct_cpu_us"][0] > 0, name
        assert result["through_cpu_us"][0] > 0, name
        assert result["cpu_ratio"] > 0, name
        assert f"| {name} |" in stdout  # the table shows it

    latency = results["latency"]
    assert len(latency["delivered_us"]) == 3
    for label, figures in latency["delivered_us"].items():
        assert figures["n"] > 0 and figures["median"] > 0, label
        assert latency["decided_us"][label]["median"] <= figures["median"], label
    assert latency["client_http1_us"]["mux"]["n"] > 0

    memory = results["memory"]
    assert memory["connections"] > 0
    assert memory["rss_during_kib"] > memory["rss_before_kib"]
    assert memory["probe_during_us"]["n"] > 0
    assert "Memory per silent connection" in stdout


@needs_load_generators
@pytest.mark.parametrize("peer", peers.PEERS)
def test_quick_run_measures_each_installed_peer(
    quick_run: tuple[dict[str, Any], str], peer: str
) -> None:
    reason = peers.missing().get(peer)
    if reason:
        pytest.skip(reason)
    results, stdout = quick_run
    assert peer not in results["peers_skipped"], results["peers_skipped"]
    scenarios = [sc.name for sc in SCENARIOS if peer in sc.peers]
    assert scenarios, peer
    by_name = {r["name"]: r for r in results["results"]}
    for name in scenarios:
        row = by_name[name]["peers"][peer]
        assert row["error"] is None, (name, row["error"])
        assert len(row["values"]) == 1 and row["values"][0] > 0, name
        assert row["against"] == AGAINST[peer]
        assert row["ratio"] > 0 and row["median_round_ratio"] > 0, name
        # The CPU of every process serving the peer's side was counted.
        assert row["cpu_us"] > 0 and row["cpu_ratio"] > 0, name
        assert f"| {name} | {SIDE_TITLES[peer]} | {AGAINST[peer]} |" in stdout
    # The relay row checked, with a real socket, whether a half-close passes.
    check = by_name["relay-bulk"]["half_close"][peer]
    assert isinstance(check["passed"], bool) and check["seen"], check
    assert f"{peer}: " in stdout


@needs_load_generators
def test_txcmux_relay_passes_a_half_close(
    quick_run: tuple[dict[str, Any], str],
) -> None:
    """The reference sink and txcmux's relay both carry the end of stream."""
    results, _ = quick_run
    (relay,) = [r for r in results["results"] if r["name"] == "relay-bulk"]
    assert relay["half_close"]["direct"]["passed"], relay["half_close"]
    assert relay["half_close"]["txcmux"]["passed"], relay["half_close"]


@needs_load_generators
def test_a_missing_peer_is_skipped_with_one_line(tmp_path: Path) -> None:
    """Without haproxy, sslh and go on the PATH the run goes on without them."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("wrk", "h2load"):
        (tools / tool).symlink_to(shutil.which(tool) or tool)
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--skip-costs",
         "--only", "http1-keepalive"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PATH": str(tools)},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    skipped = [line for line in done.stdout.splitlines() if line.startswith("peer ")]
    assert skipped == [
        "peer haproxy skipped: haproxy is not installed (Debian: haproxy)",
        "peer sslh skipped: sslh-select is not installed (Debian: sslh)",
        "peer go-direct skipped: go is not installed (Debian: golang-go)",
        "peer go-cmux skipped: go is not installed (Debian: golang-go)",
    ]
    assert "| http1-keepalive |" in done.stdout
    assert "HAProxy" not in done.stdout


@pytest.mark.skipif(shutil.which("wrk") is None, reason="the growth series needs wrk")
def test_the_growth_series_runs(tmp_path: Path) -> None:
    """``python -m benchmarks.growth --quick``: a row per level and state, a
    cost per route count and SNI list, and (with the bench extra's
    matplotlib) the two charts."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        charts: list[str] = []
    else:
        charts = ["--chart", str(tmp_path)]
    results_file = tmp_path / "growth.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.growth", "--quick",
         "--json", str(results_file), *charts],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(results_file.read_text())
    levels = {(row["state"], row["open"]) for row in results["connections"]}
    assert levels == {(s, n) for s in ("sniffing", "idle") for n in (0, 100, 1000)}
    for row in results["connections"]:
        assert row["new_p50_ms"] > 0 and row["decided_p50_ms"] > 0, row
        if row["open"]:
            # Every connection held open is one more descriptor in the server.
            assert row["server_fds"] > row["open"], row
    assert sorted(results["routes"]["routes"], key=int) == ["1", "4", "16", "64"]
    for row in results["routes"]["routes"].values():
        assert row["decision_us"] > 0 and row["close_rps"] > 0, row
    assert sorted(results["routes"]["sni_names"], key=int) == ["1", "10", "100", "1000"]
    if charts:
        assert (tmp_path / "growth-connections.png").stat().st_size > 0
        assert (tmp_path / "growth-routes.png").stat().st_size > 0


def test_the_header_deadline_benchmark_runs() -> None:
    """``python -m benchmarks.header_deadline``, in a small size: both
    settings served every request (the benchmark checks the answers) and
    the three lines are printed."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.header_deadline",
         "--requests", "300", "--rounds", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("header_timeout off: ") and "us of CPU" in lines[0]
    assert lines[1].startswith("header_timeout 60 s: ") and "us of CPU" in lines[1]
    assert lines[2].startswith("difference: ")
