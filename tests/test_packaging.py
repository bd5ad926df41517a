"""Packaging: the sdist and the wheel hold what they must, and nothing stray.

The project is copied into a temporary folder and built there (the sdist,
then the wheel from the sdist, as ``python -m build`` does), so the checkout
is left untouched.  When the installed setuptools is new enough for
``[build-system]`` the build runs without isolation; otherwise (a fresh
virtualenv brings an old one) it builds in isolation, which needs the
package index.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import txcmux
from txcmux.testing import CAPTURES

from .test_self_contained import copy_checkout

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
BUILD_REQUIRES: list[str] = PYPROJECT["build-system"]["requires"]

# Output from pip when the index cannot be reached (offline machines).
_OFFLINE = re.compile(
    r"Could not find a version that satisfies the requirement setuptools"
    r"|No matching distribution found for setuptools"
    r"|Failed to establish a new connection|Network is unreachable",
)


def _missing_tools() -> list[str]:
    return [
        tool
        for tool in ("build", "twine", "towncrier", "packaging")
        if importlib.util.find_spec(tool) is None
    ]


if _missing_tools():  # pragma: no cover - the test extra installs them
    pytest.skip(
        f"{', '.join(_missing_tools())} not installed: pip install '.[test]'",
        allow_module_level=True,
    )

from packaging.requirements import Requirement  # noqa: E402
from packaging.version import Version  # noqa: E402


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _build_backend_installed() -> bool:
    """Whether this environment has what ``[build-system]`` requires."""
    for line in BUILD_REQUIRES:
        requirement = Requirement(line)
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            return False
        if not requirement.specifier.contains(installed, prereleases=True):
            return False
    return True


@dataclass
class Built:
    wheel: Path
    sdist: Path
    wheel_names: list[str]
    sdist_names: list[str]
    source: Path  # the copy it was built from


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    source = copy_checkout(tmp_path_factory.mktemp("source") / "txcmux")
    out = tmp_path_factory.mktemp("dist")
    args = ["-m", "build", "--outdir", str(out), str(source)]
    isolated = not _build_backend_installed()
    if not isolated:
        args.insert(2, "--no-isolation")
    done = _run(args, source)
    if done.returncode != 0 and isolated and _OFFLINE.search(done.stdout + done.stderr):
        pytest.skip(
            "the installed setuptools is older than [build-system] requires"
            f" ({', '.join(BUILD_REQUIRES)}) and an isolated build"
            " could not reach the package index"
        )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    with zipfile.ZipFile(wheel) as archive:
        wheel_names = archive.namelist()
    with tarfile.open(sdist) as archive:
        top = sdist.name.removesuffix(".tar.gz")
        sdist_names = [
            name.removeprefix(top + "/") for name in archive.getnames() if "/" in name
        ]
    return Built(wheel, sdist, wheel_names, sdist_names, source)


def _metadata(built: Built) -> str:
    with zipfile.ZipFile(built.wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return archive.read(name).decode("utf-8")


def test_the_wheel_holds_the_plugin_the_types_and_the_captures(built: Built) -> None:
    names = set(built.wheel_names)
    assert "twisted/plugins/txcmux_plugin.py" in names
    assert "txcmux/py.typed" in names
    captures = {f"txcmux/testing/_captures/{name}" for name in CAPTURES}
    assert captures <= names
    assert "txcmux/testing/_captures/README.md" in names


def test_the_wheel_holds_every_module_of_the_package(built: Built) -> None:
    # A private package that lacks __init__.py would silently miss the wheel.
    modules = {
        path.relative_to(built.source).as_posix()
        for path in (built.source / "txcmux").rglob("*.py")
    }
    assert modules, "no modules found in the copy"
    assert modules <= set(built.wheel_names)


def test_the_wheel_leaves_twisted_alone(built: Built) -> None:
    names = set(built.wheel_names)
    assert not any(name.endswith("dropin.cache") for name in names)
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    outside = {
        name
        for name in names
        if not name.startswith(("txcmux/", "twisted/plugins/", "txcmux-"))
    }
    assert outside == set()
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in names)


def test_the_wheel_metadata(built: Built) -> None:
    metadata = _metadata(built)
    assert f"Version: {txcmux.__version__}\n" in metadata
    assert "License-Expression: MIT\n" in metadata
    assert "Requires-Python: >=3.11\n" in metadata
    assert "Provides-Extra: test\n" in metadata
    assert "Provides-Extra: bench\n" in metadata
    for tool in ("build", "twine", "towncrier", "hypothesis"):
        assert re.search(
            rf"^Requires-Dist: {tool}\b.*extra == \"test\"", metadata, re.M
        )
    assert "Description-Content-Type: text/markdown\n" in metadata
    with zipfile.ZipFile(built.wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith("entry_points.txt")]
        entry_points = archive.read(name).decode("utf-8")
    assert "[txcmux.matchers]" in entry_points
    assert re.search(r"^redis = txcmux\.matchers\._extra:redis$", entry_points, re.M)
    assert re.search(
        r"^postgres = txcmux\.matchers\._extra:postgres$", entry_points, re.M
    )


def test_the_sdist_holds_the_tests_and_the_docs(built: Built) -> None:
    names = set(built.sdist_names)
    for needed in (
        "tests/test_packaging.py",
        "tests/captures.py",
        "tests/plugin_package/pyproject.toml",
        "docs/testing.md",
        "docs/switching.md",
        "README.md",
        "CHANGELOG.md",
        "changelog.d/template.md",
        "pyproject.toml",
        "setup.py",
        "twisted/plugins/txcmux_plugin.py",
        "txcmux/testing/_captures/openssh-client.bin",
        ".ci/run",
    ):
        assert needed in names, needed
    assert not any(name.endswith("dropin.cache") for name in names)
    assert not any("__pycache__" in name for name in names)


def test_twine_accepts_both(built: Built) -> None:
    done = _run(
        ["-m", "twine", "check", "--strict", str(built.wheel), str(built.sdist)],
        built.source,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("PASSED") == 2, done.stdout


def test_the_change_notes_draft(built: Built) -> None:
    done = _run(["-m", "towncrier", "build", "--draft"], built.source)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^## txcmux \S+ \(\d{4}-\d\d-\d\d\)$", done.stdout, re.M)
    notes = sorted((built.source / "changelog.d").glob("*.*.md"))
    assert notes, "no change notes"
    for note in notes:
        first_words = note.read_text("utf-8").split()[:6]
        assert " ".join(first_words) in " ".join(done.stdout.split()), note.name


def test_one_source_for_the_version() -> None:
    Version(txcmux.__version__)  # a PEP 440 version
    assert txcmux.__version__ == "0.2.0.dev0"
    project = PYPROJECT["project"]
    assert "version" not in project
    assert project["dynamic"] == ["version"]
    dynamic = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "txcmux.__version__"}


def test_setup_py_says_only_what_pyproject_cannot() -> None:
    tree = ast.parse((ROOT / "setup.py").read_text("utf-8"))
    (call,) = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup"
    ]
    keywords = {keyword.arg for keyword in call.keywords}
    assert keywords == {"packages", "package_data", "include_package_data"}


def test_the_build_backend_is_new_enough_for_the_metadata() -> None:
    # license = "MIT" (an SPDX expression) needs setuptools 77; older ones
    # reject the project table, so [build-system] must ask for it.
    (setuptools,) = [
        Requirement(r) for r in BUILD_REQUIRES if r.startswith("setuptools")
    ]
    assert isinstance(PYPROJECT["project"]["license"], str)
    assert not setuptools.specifier.contains("76.9")
    assert setuptools.specifier.contains("77.0")
