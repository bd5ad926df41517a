"""The documentation site: it builds without a warning, its links hold, it reads.

Built once per test run into a temporary directory with the command
docs/conf.py names (``python -m sphinx -W -b html docs OUT``), then:
every internal link and anchor resolves to a page and an id of the built
site, and three pages opened in headless Chromium show their content.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

pytest.importorskip("sphinx")
pytest.importorskip("myst_parser")
pytest.importorskip("furo")

DOCS = Path(__file__).resolve().parent.parent / "docs"
CHROMIUM = shutil.which("chromium")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("dot") is None:
        pytest.skip("the flow diagram needs Graphviz's dot (Debian's graphviz)")
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(DOCS), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return out


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name == "id" and value:
                self.ids.add(value)
            if name == "href" and value and tag == "a":
                self.hrefs.append(value)


def _parse(page: Path) -> _Links:
    links = _Links()
    links.feed(page.read_text(encoding="utf-8"))
    return links


def test_every_page_of_docs_is_in_the_site(site: Path) -> None:
    pages = {p.relative_to(DOCS).with_suffix("") for p in DOCS.rglob("*.md")}
    pages = {p for p in pages if "_build" not in p.parts}
    built = {p.relative_to(site).with_suffix("") for p in site.rglob("*.html")}
    assert pages <= built, pages - built


def test_the_flow_diagram_is_drawn_at_build_time(site: Path) -> None:
    """docs/flow.dot becomes an SVG that switching.html shows."""
    page = (site / "switching.html").read_text(encoding="utf-8")
    drawn = re.findall(r'<object data="(_images/graphviz-[0-9a-f]+\.svg)"', page)
    assert len(drawn) == 1, "switching.html shows no graphviz SVG"
    svg = (site / drawn[0]).read_text(encoding="utf-8")
    assert "<svg" in svg
    # Every stage of the flow is in the drawing, as text.
    for label in (
        "listener",
        "PROXY stage",
        "detector",
        "1. tls()",
        "2. grpc()",
        "nested detector",
        "handoff",
        "sniff_timeout",
        "RelayFactory",
    ):
        assert label in svg, label


def test_internal_links_and_anchors_resolve(site: Path) -> None:
    parsed = {page: _parse(page) for page in site.rglob("*.html")}
    broken = []
    for page, links in parsed.items():
        if "_modules" in page.parts:
            continue  # viewcode's source pages link to themselves only
        for href in links.hrefs:
            parts = urlsplit(href)
            if parts.scheme or parts.netloc or href.startswith("mailto:"):
                continue
            target = (
                (page.parent / unquote(parts.path)).resolve() if parts.path else page
            )
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.name}: {href} (no such page)")
            elif parts.fragment and target.suffix == ".html":
                ids = parsed[target].ids if target in parsed else _parse(target).ids
                if parts.fragment not in ids:
                    broken.append(f"{page.name}: {href} (no such anchor)")
    assert not broken, "\n".join(broken[:30])


def test_the_api_reference_comes_from_the_docstrings(site: Path) -> None:
    api = (site / "api.html").read_text(encoding="utf-8")
    for name in ("ProtocolSwitchingFactory", "remote_ip", "SwitchHarness", "Limits"):
        assert f'id="txcmux.{name}"' in api or re.search(
            rf'id="txcmux\.\w+\.{name}"', api
        ), name


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium")
@pytest.mark.parametrize(
    ("page", "expected"),
    [
        ("index.html", "When to use it, and when not"),
        ("matchers.html", "When the server speaks first"),
        ("operations.html", "Workers: more than one core"),
        ("tutorial.html", "Step 5: the same port from a config file"),
        ("howto/kubernetes.html", "Run on Kubernetes"),
    ],
)
def test_pages_read_in_a_browser(site: Path, page: str, expected: str) -> None:
    assert CHROMIUM is not None
    dom = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--dump-dom",
            (site / page).as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert expected in dom.stdout, dom.stderr[-2000:]
    assert "txcmux" in dom.stdout
