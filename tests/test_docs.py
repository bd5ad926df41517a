"""The examples in docs/*.md and in txcmux's docstrings run and say what they show."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import txcmux

DOCS = Path(__file__).resolve().parent.parent / "docs"
FENCED = re.compile(r"^```(?:python|pycon)\n(.*?)^```", re.M | re.S)


def _doc_examples() -> list[tuple[str, str]]:
    found = []
    for page in sorted(DOCS.glob("*.md")):
        for number, block in enumerate(FENCED.findall(page.read_text())):
            if ">>>" in block:
                found.append((f"{page.name}#{number}", block))
    return found


@pytest.mark.parametrize(("name", "block"), _doc_examples())
def test_docs_examples_run(name: str, block: str) -> None:
    parser = doctest.DocTestParser()
    test = parser.get_doctest(block, {}, name, name, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert runner.failures == 0, f"{runner.failures} failing example(s) in {name}"


def _modules() -> list[str]:
    names = [txcmux.__name__]
    for info in pkgutil.walk_packages(txcmux.__path__, txcmux.__name__ + "."):
        names.append(info.name)
    return names


@pytest.mark.parametrize("module_name", _modules())
def test_docstring_examples_run(module_name: str) -> None:
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_there_are_examples_to_run() -> None:
    assert len(_doc_examples()) >= 2
