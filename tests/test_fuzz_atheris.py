"""Running the atheris fuzz targets of tests/fuzz briefly, when atheris is here.

Each target runs in its own process (libFuzzer ends the process it runs
in), its corpus seeded with every opening of tests/fuzzing.py's
:data:`~tests.fuzzing.SEEDS` (the real client captures among them), for a
few thousand inputs; with ``TXCMUX_FUZZ=long`` for ten minutes each.  A
crash fails the test and shows the input that caused it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .fuzzing import LONG, SEEDS

pytest.importorskip(
    "atheris", reason="atheris is not installed (pip install atheris; CPython only)"
)

ROOT = Path(__file__).resolve().parents[1]

#: Each target, and how a seed becomes one of its inputs.
TARGETS = {
    "fuzz_proxy": lambda seed: b"\x03" + seed,  # first byte: the v2 bound
    "fuzz_client_hello": lambda seed: seed,
    "fuzz_detector": lambda seed: seed,
}
RUNS = {"fuzz_proxy": 5000, "fuzz_client_hello": 2000, "fuzz_detector": 1000}


@pytest.mark.timeout(900 if LONG else 240)
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_the_fuzz_target_finds_nothing(target: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    seed_input = TARGETS[target]
    for i, seed in enumerate(SEEDS.values()):
        (corpus / f"seed-{i}").write_bytes(seed_input(seed[:2048]))
    limit = ["-max_total_time=600"] if LONG else [f"-runs={RUNS[target]}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            f"tests.fuzz.{target}",
            *limit,
            "-max_len=2048",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=870 if LONG else 220,
    )
    crashes = sorted(tmp_path.glob("crash-*")) + sorted(tmp_path.glob("timeout-*"))
    found = [(c.name, c.read_bytes()[:300]) for c in crashes]
    assert done.returncode == 0 and not found, (found, done.stderr[-3000:])
    assert "Done" in done.stderr, done.stderr[-3000:]
