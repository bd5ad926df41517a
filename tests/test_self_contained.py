"""A checkout is the whole project: nothing in it reads a path outside it.

Two checks.  A static scan of the tests, docs, benchmarks, examples and the
README for paths that climb out of the checkout (``..`` past its root, chains
of ``.parent`` from ``__file__`` longer than the file is deep, absolute paths
into someone's machine).  And the real thing: the checkout's files copied into
an empty temporary folder with nothing beside it, where the suite must collect
and the tests that read the real client captures must pass.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCANNED_FOLDERS = ("tests", "docs", "benchmarks", "examples")
SCANNED_FILES = ("README.md",)
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".cfg", ".ini", ".rst", ".sh", ""}

# Tests that read the captures (and the helpers that serve them); run in the copy.
CAPTURE_TESTS = (
    "tests/test_testing.py",
    "tests/test_properties.py",
    "tests/test_matchers.py",
    "tests/test_tls_matcher.py",
)

# Folders a checkout may hold that are not the project (made by tools).
_NOT_THE_PROJECT = {
    ".git",
    ".venv",
    "build",
    "dist",
    "__pycache__",
    ".hypothesis",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
}


def checkout_files(root: Path = ROOT) -> list[str]:
    """The project's files, relative to ``root``, as a clone would have them.

    In a git checkout: the tracked files plus the untracked ones git does not
    ignore (work not committed yet is part of the project; what .gitignore
    names is not).  Elsewhere (an unpacked sdist): every file outside the
    tools' folders.
    """
    if (root / ".git").exists() and shutil.which("git"):
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            capture_output=True,
            check=True,
        ).stdout.decode("utf-8")
        names = sorted({name for name in listed.split("\0") if name})
        return [name for name in names if (root / name).is_file()]
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [
            s
            for s in subfolders
            if s not in _NOT_THE_PROJECT and not s.endswith(".egg-info")
        ]
        for file in files:
            found.append(Path(folder, file).relative_to(root).as_posix())
    return sorted(found)


def copy_checkout(destination: Path, root: Path = ROOT) -> Path:
    """Copy the project's files into ``destination`` (made if missing)."""
    for name in checkout_files(root):
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)
    return destination


# -- the static scan -----------------------------------------------------------

_UP = r"\.\./"
# ``..`` segments at the start of a relative path (not inside ``.../``).
_RELATIVE_CLIMB = re.compile(r"(?:^|(?<=[\s(\"'`<\[=:]))((?:" + _UP + r")+)")
# Path(__file__) followed by .resolve()/.absolute() and .parent / .parents[n].
_FILE_CHAIN = re.compile(
    r"__file__\)?((?:\s*\.\s*(?:resolve\(\)|absolute\(\)|parent\b|parents\[\d+\]))+)"
)
_DIRNAME_CHAIN = re.compile(
    r"((?:(?:os\.path\.)?dirname\(\s*)+)(?:os\.path\.)?"
    r"(?:abspath\(|realpath\()?\s*__file__"
)
_ABSOLUTE = re.compile(r"(?<![\w.~-])/(?:work|home|root|Users)/[\w.-]")


def _levels(chain: str) -> int:
    """How many folders up a ``.parent``/``.parents[n]`` chain goes."""
    levels = len(re.findall(r"\.\s*parent\b", chain))
    levels += sum(int(n) + 1 for n in re.findall(r"parents\[(\d+)\]", chain))
    return levels


def escapes(relative_name: str, text: str) -> list[str]:
    """The places in one file's ``text`` that reach outside the checkout.

    ``relative_name`` is the file's path in the checkout; relative paths in
    Markdown are taken from its folder, in Python from the checkout's root
    (where the tests run).
    """
    path = PurePosixPath(relative_name)
    depth = len(path.parts) - 1  # folders between the checkout's root and the file
    found: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{relative_name}:{number}"
        if re.search(_UP + r"(?:" + _UP + r")*shared/", line):
            found.append(f"{where}: a path into a shared folder beside the checkout")
        for match in _ABSOLUTE.finditer(line):
            found.append(f"{where}: an absolute path {match.group(0)}...")
        for match in _RELATIVE_CLIMB.finditer(line):
            ups = match.group(1).count("/")
            allowed = depth if path.suffix == ".md" else 0
            if ups > allowed:
                found.append(
                    f"{where}: {match.group(1)!r} climbs {ups} folders from a file"
                    f" {allowed} below the checkout's root"
                )
        for match in _FILE_CHAIN.finditer(line):
            levels = _levels(match.group(1))
            if levels > depth + 1:
                found.append(
                    f"{where}: __file__ then {levels} parents leaves the checkout"
                    f" (the file is {depth} folders deep)"
                )
        for match in _DIRNAME_CHAIN.finditer(line):
            levels = match.group(1).count("dirname(")
            if levels > depth + 1:
                found.append(
                    f"{where}: {levels} dirname() of __file__ leaves the checkout"
                )
        if re.search(r"cwd\(\)\s*\.\s*parent\b|getcwd\(\),\s*['\"]\.\.['\"]", line):
            found.append(f"{where}: a path above the working folder")
    return found


def _scanned() -> list[str]:
    names = []
    for name in checkout_files():
        path = PurePosixPath(name)
        wanted = name in SCANNED_FILES or path.parts[0] in SCANNED_FOLDERS
        if wanted and path.suffix in TEXT_SUFFIXES:
            names.append(name)
    return names


def test_nothing_reads_a_path_outside_the_checkout() -> None:
    names = _scanned()
    assert "README.md" in names
    assert "tests/captures.py" in names
    found = []
    for name in names:
        found.extend(escapes(name, (ROOT / name).read_text("utf-8", "replace")))
    assert found == []


def _sample(text: str) -> str:
    """A sample for the scan, written so that the scan of this file passes.

    ``FILE`` stands for ``__file__``, ``UP/`` for one folder up, ``ABS/`` for
    an absolute path into a machine, ``CWD`` for the working folder.
    """
    return (
        text.replace("FILE", "__" + "file__")
        .replace("CWD", "cwd" + "()")
        .replace("UP/", "." + "./")
        .replace("ABS/", "/" + "work/")
    )


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("docs/switching.md", "every capture in `UP/shared/captures` split"),
        ("tests/captures.py", "ROOT = Path(FILE).resolve().parent.parent.parent"),
        ("tests/captures.py", "HERE = Path(FILE).parents[2] / 'x'"),
        ("tests/a/b.py", "os.path.dirname(dirname(dirname(dirname(FILE))))"),
        ("benchmarks/run.py", "open('UP/data.bin')"),
        ("docs/grpc.md", "see [the design](UP/UP/DESIGN.md)"),
        ("README.md", "captured in ABS/shared/captures"),
        ("examples/app.py", "base = Path.CWD.parent"),
    ],
)
def test_the_scan_finds_escapes(name: str, text: str) -> None:
    assert escapes(name, _sample(text)) != []


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("docs/grpc.md", "[examples/app.py](UP/examples/app.py)"),
        ("docs/grpc.md", "`unix:/tmp/txcmux-grpc-.../c1234-7-...`"),
        ("tests/test_docs.py", 'DOCS = Path(FILE).resolve().parent.parent / "docs"'),
        ("tests/test_plugins.py", "SOURCE = Path(FILE).resolve().parent / 'p'"),
        ("tests/x.py", "Path(FILE).parents[1] / 'README.md'"),
        ("README.md", "[docs/switching.md](docs/switching.md)"),
    ],
)
def test_the_scan_leaves_paths_inside_the_checkout_alone(name: str, text: str) -> None:
    assert escapes(name, _sample(text)) == []


# -- the real thing: a copy with nothing beside it -------------------------------


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.fixture(scope="module")
def lone_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkout's files in an empty folder: nothing beside them."""
    alone = tmp_path_factory.mktemp("alone")
    copy = copy_checkout(alone / "txcmux")
    assert [p.name for p in alone.iterdir()] == ["txcmux"]
    return copy


def test_the_copy_imports_itself(lone_copy: Path) -> None:
    done = _run(
        [
            "-c",
            "import txcmux, txcmux.testing, tests.captures;"
            " print(txcmux.__file__); print(txcmux.testing.__file__)",
        ],
        lone_copy,
    )
    assert done.returncode == 0, done.stderr
    for line in done.stdout.splitlines():
        assert Path(line).resolve().is_relative_to(lone_copy.resolve()), line


def test_the_copy_collects_every_test(lone_copy: Path) -> None:
    done = _run(
        ["-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"], lone_copy
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"^\d+ tests collected", done.stdout, re.M), done.stdout[-500:]
    assert "error" not in done.stdout.lower().splitlines()[-1]


def test_the_capture_tests_pass_in_the_copy(lone_copy: Path) -> None:
    done = _run(
        ["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *CAPTURE_TESTS],
        lone_copy,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"\d+ passed", done.stdout), done.stdout[-500:]
