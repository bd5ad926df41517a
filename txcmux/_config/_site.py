"""The admin site: ``/metrics``, the status page, ``/status.json``, health.

It serves a :class:`~txcmux._config._status.ServiceStatus` (or anything
with its ``registry``, ``status()`` and ``readiness()``) on the ``[admin]``
listener, never on the public port:

- ``/metrics``: the Prometheus text format, from prometheus_client;
- ``/``: a page a person reads, plain HTML and CSS, refreshing itself every
  five seconds; everything in it that a client sent is escaped;
- ``/status.json``: the same data as JSON;
- ``/healthz``: 200 while the process runs; ``/readyz``: 200 while it
  serves, 503 ``starting`` or ``draining`` otherwise.

Only GET and HEAD are answered; every answer says ``Cache-Control:
no-store``.
"""

from __future__ import annotations

import html
import json
import time
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site


class AdminSource(Protocol):
    """What the admin site shows."""

    registry: CollectorRegistry

    def status(self) -> dict[str, Any]:
        """The snapshot of ``/status.json``."""

    def readiness(self) -> tuple[bool, str]:
        """Whether to answer ``/readyz`` with 200, and the word to say."""


class _Page(Resource):
    isLeaf = True

    def __init__(self, source: AdminSource) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.source = source

    def render(self, request: Any) -> bytes:
        request.setHeader(b"cache-control", b"no-store")
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD")
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"only GET and HEAD\n"
        refresh = getattr(self.source, "refresh", None)
        if refresh is None:
            return self.answer(request)
        # A source gathered from elsewhere (a supervisor's workers) is
        # fetched first.
        finished = request.notifyFinish()
        finished.addErrback(lambda failure: None)  # the client went away

        def answer(result: object) -> None:
            if not finished.called:
                request.write(self.answer(request))
                request.finish()

        refresh().addBoth(answer)
        done: bytes = NOT_DONE_YET  # type: ignore[assignment]
        return done

    def answer(self, request: Any) -> bytes:
        raise NotImplementedError


class _Metrics(_Page):
    def answer(self, request: Any) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.source.registry)


class _Json(_Page):
    def answer(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(self.source.status(), indent=1).encode() + b"\n"


class _Health(_Page):
    def __init__(self, source: AdminSource, ready: bool) -> None:
        super().__init__(source)
        self.ready = ready

    def answer(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if not self.ready:
            return b"ok\n"
        ready, word = self.source.readiness()
        if not ready:
            request.setResponseCode(503)
        return word.encode() + b"\n"


class _StatusPage(_Page):
    def answer(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        render = getattr(self.source, "page", render_status)
        page: str = render(self.source.status())
        return page.encode()


class _Root(Resource):
    def __init__(self, source: AdminSource) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.page = _StatusPage(source)
        self.putChild(b"metrics", _Metrics(source))
        self.putChild(b"status.json", _Json(source))
        self.putChild(b"healthz", _Health(source, ready=False))
        self.putChild(b"readyz", _Health(source, ready=True))

    def getChild(self, path: bytes, request: Any) -> Resource:
        if path == b"" and not request.postpath:
            return self.page
        child: Resource = super().getChild(path, request)  # type: ignore[no-untyped-call]
        return child  # a 404 page


def admin_site(source: AdminSource) -> Site:
    """The Site serving ``source`` (with no access log: probes are frequent)."""
    site = Site(_Root(source))  # type: ignore[no-untyped-call]
    site.log = lambda request: None  # type: ignore[method-assign]
    site.noisy = False
    return site


# -- the status page -------------------------------------------------------------

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em;
       padding: 0 1em; color: #1d2430; background: #fbfbfd; }
h1 { font-size: 1.5em; margin-bottom: .2em; }
h2 { font-size: 1.1em; margin-top: 1.6em; }
.meta { color: #5b6472; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: .35em .6em; border-bottom: 1px solid #e3e6ec; }
th { background: #eef1f6; font-weight: 600; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
code { font: 13px ui-monospace, monospace; word-break: break-all; }
.state { display: inline-block; padding: .1em .6em; border-radius: 1em;
         font-weight: 600; }
.serving, .up { background: #dcf5e3; color: #135c2c; }
.draining, .starting, .unknown { background: #fff1cf; color: #6b4e00; }
.down, .error { background: #fde0e0; color: #8a1f1f; }
"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))


def _when(stamp: float | None, now: float) -> str:
    if stamp is None:
        return ""
    iso = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp))
    return f"{iso} ({now - stamp:.0f} s ago)"


def _table(heads: list[str], rows: list[list[str]], numeric: set[int]) -> str:
    if not rows:
        return '<p class="meta">none</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in heads)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{cell}</td>' if i in numeric else f"<td>{cell}</td>"
            for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def render_status(status: dict[str, Any]) -> str:
    """The status page for a :meth:`AdminSource.status` snapshot.

    >>> page = render_status({"state": "serving", "rejections": {"recent": [
    ...     {"peer": "<script>", "reason": "no_match", "first_bytes": "\\\\x00"}]}})
    >>> "&lt;script&gt;" in page and "<script>" not in page
    True
    """
    now = time.time()
    config = status.get("config", {})
    state = str(status.get("state", "unknown"))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        '<meta http-equiv="refresh" content="5">',
        f"<title>txcmux {_e(status.get('version'))}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>txcmux <span class='state {_e(state)}'>{_e(state)}</span></h1>",
        f"<p class='meta'>version {_e(status.get('version'))} &middot; pid"
        f" {_e(status.get('pid'))} &middot; up"
        f" {float(status.get('uptime_seconds', 0)):.0f} s &middot; config"
        f" <code>{_e(config.get('source'))}</code>, generation"
        f" {_e(config.get('generation'))}, loaded"
        f" {_e(_when(config.get('loaded_at'), now))}</p>",
    ]
    if config.get("last_reload_error"):
        parts.append(
            "<p><span class='state error'>last reload refused</span> "
            f"<code>{_e(config['last_reload_error'])}</code></p>"
        )
    parts.append("<h2>Listeners</h2>")
    parts.append(
        _table(
            ["listener", "address", "PROXY", "accepted", "open", "sniffing", "limit"],
            [
                [
                    f"<code>{_e(item.get('name'))}</code>",
                    _e(item.get("address")),
                    _e(item.get("proxy_protocol")),
                    _e(item.get("accepted")),
                    _e(item.get("active")),
                    _e(item.get("sniffing")),
                    _e(item.get("max_connections") or "none"),
                ]
                for item in status.get("listeners", [])
            ],
            {3, 4, 5},
        )
    )
    parts.append("<h2>Routes, in priority order</h2>")
    parts.append(
        _table(
            ["#", "route", "matchers", "target", "handed over", "open", "limit"],
            [
                [
                    _e(item.get("priority")),
                    f"<b>{_e(item.get('name'))}</b>",
                    "<code>" + _e(" | ".join(item.get("matchers", []))) + "</code>",
                    _e(item.get("target")),
                    _e(item.get("accepted")),
                    _e(item.get("active")),
                    _e(item.get("max_connections") or "none"),
                ]
                for item in status.get("routes", [])
            ],
            {0, 4, 5},
        )
    )
    parts.append("<h2>Backends</h2>")
    parts.append(
        _table(
            ["route", "endpoint", "state", "connect failures", "mean connect", "error"],
            [
                [
                    _e(item.get("route")),
                    f"<code>{_e(item.get('endpoint'))}</code>",
                    f"<span class='state {_e(item.get('state'))}'>"
                    f"{_e(item.get('state'))}</span>",
                    _e(item.get("connect_failures")),
                    _e(
                        ""
                        if item.get("connect_ms") is None
                        else f"{item['connect_ms']:.2f} ms"
                    ),
                    _e(item.get("last_error")),
                ]
                for item in status.get("backends", [])
            ],
            {3},
        )
    )
    rejections = status.get("rejections", {})
    counts = rejections.get("counts", {})
    parts.append("<h2>Rejections</h2>")
    parts.append(
        _table(
            ["reason", "connections"],
            [[_e(k), _e(v)] for k, v in sorted(counts.items()) if v],
            {1},
        )
    )
    parts.append("<h2>Recent rejections, newest first</h2>")
    parts.append(
        _table(
            ["when", "peer", "reason", "detail", "first bytes"],
            [
                [
                    _e(_when(item.get("time"), now)),
                    _e(item.get("peer")),
                    _e(item.get("reason")),
                    _e(item.get("detail")),
                    f"<code>{_e(item.get('first_bytes'))}</code>",
                ]
                for item in reversed(rejections.get("recent", []))
            ],
            set(),
        )
    )
    if status.get("workers"):
        parts.append("<h2>Workers</h2>")
        parts.append(
            _table(
                ["pid", "state", "restarts"],
                [
                    [_e(w.get("pid")), _e(w.get("state")), _e(w.get("restarts"))]
                    for w in status["workers"]
                ],
                {2},
            )
        )
    parts.append(
        "<p class='meta'>Also: <a href='/metrics'>/metrics</a> &middot; "
        "<a href='/status.json'>/status.json</a> &middot; "
        "<a href='/healthz'>/healthz</a> &middot; <a href='/readyz'>/readyz</a></p>"
    )
    parts.append("</body></html>\n")
    return "".join(parts)


def render_workers(status: dict[str, Any]) -> str:
    """The status page of a supervisor (``workers = N``): one row per worker.

    >>> page = render_workers({"supervisor": {"state": "serving", "pid": 7},
    ...     "workers": [{"index": 0, "pid": 8, "state": "ready", "restarts": 1,
    ...                  "status": {"listeners": [{"accepted": 3, "active": 1}]}}]})
    >>> "<td class=\\"n\\">3</td>" in page and "supervisor" in page
    True
    """
    supervisor = status.get("supervisor", {})
    state = str(supervisor.get("state", "unknown"))
    rows = []
    for worker in status.get("workers", []):
        own = worker.get("status") or {}
        listeners = own.get("listeners", [])
        rows.append(
            [
                _e(worker.get("index")),
                _e(worker.get("pid")),
                f"<span class='state {_e(worker.get('state'))}'>"
                f"{_e(worker.get('state'))}</span>",
                _e(sum(item.get("accepted", 0) for item in listeners)),
                _e(sum(item.get("active", 0) for item in listeners)),
                _e(worker.get("restarts")),
                _e(worker.get("last_exit") or ""),
                _e(worker.get("last_reload") or ""),
            ]
        )
    return "".join(
        [
            "<!doctype html><html><head><meta charset='utf-8'>",
            '<meta http-equiv="refresh" content="5">',
            f"<title>txcmux supervisor</title><style>{_STYLE}</style></head><body>",
            "<h1>txcmux supervisor"
            f" <span class='state {_e(state)}'>{_e(state)}</span></h1>",
            f"<p class='meta'>pid {_e(supervisor.get('pid'))} &middot; config"
            f" <code>{_e(supervisor.get('config'))}</code></p>",
            "<h2>Workers</h2>",
            _table(
                [
                    "worker",
                    "pid",
                    "state",
                    "accepted",
                    "open",
                    "restarts",
                    "last exit",
                    "last reload",
                ],
                rows,
                {0, 1, 3, 4, 5},
            ),
            "<p class='meta'>Each worker's own listeners, routes and rejections"
            " are in <a href='/status.json'>/status.json</a>; its metrics in"
            " <a href='/metrics'>/metrics</a>, labelled <code>worker</code>.</p>",
            "</body></html>",
        ]
    )
