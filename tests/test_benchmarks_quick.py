"""The benchmark suite still runs: ``python -m benchmarks --quick`` end to end.

Runs every scenario once, briefly, as a subprocess and checks that each one
produced a number on both sides, and that the absolute costs were measured.
No timing is asserted: this machine is shared, and the point is that the
suite never rots.  Needs wrk and h2load (skipped without them).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(
    shutil.which("wrk") is None or shutil.which("h2load") is None,
    reason="the benchmarks need wrk and h2load",
)
def test_quick_run_measures_every_scenario(tmp_path: Path) -> None:
    from benchmarks.run import SCENARIOS

    results_file = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(results_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(results_file.read_text())

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
        assert f"| {name} |" in done.stdout  # the table shows it

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
    assert "Memory per silent connection" in done.stdout
