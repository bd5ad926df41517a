"""The web app benchmark still runs: ``python -m benchmarks.webapps --quick``.

Each app once, briefly, through txcmux and under its usual server; checks
that every row has numbers on both sides.  No timing is asserted (the
machine is shared).  Needs wrk, gunicorn and uvicorn (skipped without them).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.mark.skipif(
    shutil.which("wrk") is None
    or not (BIN / "gunicorn").exists()
    or not (BIN / "uvicorn").exists(),
    reason="needs wrk, gunicorn and uvicorn (pip install '.[bench]')",
)
def test_quick_webapps_run() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.webapps", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = re.findall(
        r"^\| (flask|fastapi) \| (keep-alive|close) \| (\d+) \| [^|]+ \| (\d+) \|"
        r" ([\d.]+) \(.*\) \| (\d+) / (\d+) \(([\d.]+)x\) \|$",
        done.stdout,
        re.MULTILINE,
    )
    assert {(app, load) for app, load, *_ in rows} == {
        (app, load) for app in ("flask", "fastapi") for load in ("keep-alive", "close")
    }, done.stdout
    for _, _, ours, theirs, ratio, cpu_ours, cpu_theirs, cpu_ratio in rows:
        assert int(ours) > 0 and int(theirs) > 0 and float(ratio) > 0
        assert int(cpu_ours) > 0 and int(cpu_theirs) > 0 and float(cpu_ratio) > 0
