"""What the admin site shows of a running :class:`CmuxService`.

:class:`ServiceStatus` is the admin site's source: a Prometheus registry
whose collector reads the service's counters when ``/metrics`` is scraped
(nothing is counted twice, and nothing costs anything between scrapes),
the snapshot ``/status.json`` and the status page show, and the readiness
``/readyz`` answers.

The metrics (all prefixed ``txcmux_``; ``listener`` is the endpoint as the
file writes it, ``route`` the route's name):

- ``connections_accepted_total{listener}``, ``connections_open{listener}``,
  ``connections_sniffing{listener}``;
- ``route_connections_total{listener,route}`` (handed to the route),
  ``route_connections_open{route}``;
- ``rejections_total{listener,reason}``: closed undecided, by
  :class:`~txcmux.Reason` (``no_match``, ``too_long``, ``timeout``,
  ``limit``, ``proxy_invalid``, ...), ``peer`` (the client left) and
  ``listener`` (a wrapping transport closed it);
  ``limit_refusals_total{listener,limit}``: which limit refused;
- ``decision_seconds{listener}`` and ``decision_bytes{listener}``
  histograms: time to decide, bytes it needed;
- ``relay_connections_total{route,outcome}`` (``connected``,
  ``backend_failed``, ``client_left``, ``closed_clean``, ``closed_error``,
  ``idle_timeout``),
  ``relay_bytes_total{route,direction}`` (``up``: client to backend, added
  when a connection ends), ``relay_connections_open{route}``,
  ``backend_connect_seconds{route}`` histogram;
- ``web_closed_total{route,reason}``: connections a web route closed
  (``header_timeout``, ``frame_too_large``, ``timeout``,
  ``http2_disabled``);
- ``tls_handshakes_total{route}``, ``tls_failures_total{route,reason}``,
  ``tls_bytes_total{route,direction}`` (``in``: from the clients, encrypted;
  ``out``: from the targets, before encryption);
- ``config_generation``, ``config_loaded_timestamp_seconds``,
  ``config_reload_failed`` (1 while the last reload was refused),
  ``draining``, ``accept_paused`` (1 while out of file descriptors) and
  ``accept_pauses_total``;
- and prometheus_client's ``process_*`` and ``python_*`` metrics.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from .._histogram import Histogram
from .._log import describe_peer

if TYPE_CHECKING:
    from .._detector import Rejection
    from .._factory import ProtocolSwitchingFactory
    from ._build import CmuxService


def _escaped(data: bytes) -> str:
    """Bytes as a Python bytes literal's inside: printable ASCII, else escapes."""
    return repr(data)[2:-1]


def _histogram(
    name: str,
    doc: str,
    labels: list[str],
    series: Iterable[tuple[list[str], Histogram]],
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, histogram in series:
        family.add_metric(values, histogram.cumulative(), histogram.sum)
    return family


class ServiceStatus:
    """The admin site's view of a :class:`CmuxService` (an ``AdminSource``)."""

    def __init__(self, service: CmuxService) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def readiness(self) -> tuple[bool, str]:
        """Ready while serving; not while starting or draining."""
        state = self.service.state
        return state == "serving", state

    # -- what there is to show -------------------------------------------------

    def listeners(self) -> Iterator[tuple[str, ProtocolSwitchingFactory, Any]]:
        """(name, current detector factory, _Listener) per listener."""
        service = self.service
        for listener, mux in zip(service.listeners, service.muxes, strict=True):
            yield listener.description, mux, listener

    def all_muxes(self) -> Iterator[tuple[str, ProtocolSwitchingFactory]]:
        """(listener name, factory) for every detector factory still open.

        The detectors behind tls routes are named by their route.
        """
        service = self.service
        for generation in service.generations():
            for written, mux in zip(
                generation.config.listeners, generation.muxes, strict=True
            ):
                yield written.endpoint, mux
            for name, mux in generation.inner.items():
                yield f"tls:{name}", mux

    def factories(self) -> Iterator[tuple[str, Any]]:
        """(route name, target factory) of the current routes, each once."""
        seen: set[int] = set()
        for _, mux in self.all_muxes():
            for route in mux.routes:
                if id(route.factory) not in seen:
                    seen.add(id(route.factory))
                    yield route.name, route.factory

    def status(self) -> dict[str, Any]:
        """The snapshot ``/status.json`` serves and the status page shows."""
        from .. import __version__

        service = self.service
        now = time.time()
        config = service.config
        listeners = []
        for name, mux, listener in self.listeners():
            connections = mux.connections
            listeners.append(
                {
                    "name": name,
                    "address": listener.address(),
                    "proxy_protocol": listener.config.proxy_protocol,
                    "accepted": mux.stats["accepted"],
                    "active": connections.active,
                    "sniffing": connections.sniffing,
                    "max_connections": connections.limits.max_connections,
                }
            )
        routed: Counter[str] = Counter()
        for _, mux in self.all_muxes():
            for route in mux.routes:
                routed[route.name] += mux.stats[route.counter]
        routes = []
        mux = service.mux
        for priority, route in enumerate(mux.routes, 1):
            written = config.route(route.name)
            routes.append(
                {
                    "name": route.name,
                    "priority": priority,
                    "matchers": [m.written for m in written.matchers],
                    "target": written.target.describe(),
                    "accepted": routed[route.name],
                    "active": route.load.active,
                    "max_connections": route.max_connections,
                }
            )
        counts: Counter[str] = Counter()
        recent: list[Rejection] = []
        for _, each in self.all_muxes():
            for key, value in each.stats.items():
                if key.startswith("closed."):
                    counts[key.removeprefix("closed.")] += value
            recent.extend(each.recent)
        recent_rows = [
            {
                "time": rejection.time,
                "peer": describe_peer(rejection.peer),
                "reason": str(rejection.reason),
                "detail": rejection.detail,
                "first_bytes": _escaped(rejection.data[:64]),
            }
            for rejection in sorted(recent, key=lambda r: r.time)[-20:]
        ]
        backends = []
        from ..relay import RelayFactory

        for name, factory in self.factories():
            if not isinstance(factory, RelayFactory):
                continue
            histogram = factory.connect_seconds
            stats = factory.stats
            last_error = factory.last_error
            tried = stats["connected"] + stats["backend_failed"]
            backends.append(
                {
                    "route": name,
                    "endpoint": factory.backend,
                    "state": (
                        "unknown" if not tried else "down" if last_error else "up"
                    ),
                    "connect_failures": stats["backend_failed"],
                    "last_error": last_error,
                    "connect_ms": (
                        round(histogram.sum / histogram.count * 1000, 3)
                        if histogram.count
                        else None
                    ),
                }
            )
        return {
            "version": __version__,
            "pid": os.getpid(),
            "started": service.started_at,
            "uptime_seconds": round(now - service.started_at, 3),
            "state": service.state,
            "config": {
                "source": config.source,
                "loaded_at": service.generation.loaded_at,
                "generation": service.generation.number,
                "last_reload_error": service.reload_error,
            },
            "listeners": listeners,
            "routes": routes,
            "rejections": {"counts": dict(counts), "recent": recent_rows},
            "backends": backends,
        }


class _Collector:
    """Reads the service's counters into Prometheus metric families."""

    def __init__(self, status: ServiceStatus) -> None:
        self._status = status

    def describe(self) -> list[Metric]:
        return []  # unchecked: the families are made fresh on each scrape

    def collect(self) -> Iterator[Metric]:
        status = self._status
        service = status.service
        p = "txcmux_"
        accepted = CounterMetricFamily(
            p + "connections_accepted", "Connections accepted.", labels=["listener"]
        )
        open_ = GaugeMetricFamily(
            p + "connections_open", "Connections open now.", labels=["listener"]
        )
        sniffing = GaugeMetricFamily(
            p + "connections_sniffing",
            "Connections still undecided.",
            labels=["listener"],
        )
        routed = CounterMetricFamily(
            p + "route_connections",
            "Connections handed to a route.",
            labels=["listener", "route"],
        )
        rejected = CounterMetricFamily(
            p + "rejections",
            "Connections closed undecided, by reason.",
            labels=["listener", "reason"],
        )
        limited = CounterMetricFamily(
            p + "limit_refusals",
            "Connections refused by a limit.",
            labels=["listener", "limit"],
        )
        decisions: list[tuple[list[str], Histogram]] = []
        decision_bytes: list[tuple[list[str], Histogram]] = []
        totals: Counter[tuple[str, str]] = Counter()
        listener_accepted: Counter[str] = Counter()
        listener_open: Counter[str] = Counter()
        listener_sniffing: Counter[str] = Counter()
        seen_stats: set[int] = set()
        for name, mux in status.all_muxes():
            listener_open[name] += mux.connections.active
            listener_sniffing[name] += mux.connections.sniffing
            if id(mux.stats) in seen_stats:  # a reload keeps the same counters
                continue
            seen_stats.add(id(mux.stats))
            if mux.decision_seconds is not None:
                decisions.append(([name], mux.decision_seconds))
                decision_bytes.append(([name], mux.decision_bytes))
            for key, value in mux.stats.items():
                if key == "accepted":
                    listener_accepted[name] += value
                elif key.startswith("routed."):
                    totals[(name, key.removeprefix("routed."))] += value
                elif key.startswith("closed."):
                    rejected.add_metric([name, key.removeprefix("closed.")], value)
                elif key.startswith("limited."):
                    limited.add_metric([name, key.removeprefix("limited.")], value)
        for name, value in listener_accepted.items():
            accepted.add_metric([name], value)
        for name in listener_open:
            open_.add_metric([name], listener_open[name])
            sniffing.add_metric([name], listener_sniffing[name])
        for (name, route), value in totals.items():
            routed.add_metric([name, route], value)
        yield from (accepted, open_, sniffing, routed, rejected, limited)
        yield _histogram(
            p + "decision_seconds",
            "Time from connect to the route's decision.",
            ["listener"],
            decisions,
        )
        yield _histogram(
            p + "decision_bytes",
            "Bytes a decision needed.",
            ["listener"],
            decision_bytes,
        )
        route_open = GaugeMetricFamily(
            p + "route_connections_open",
            "Connections a route holds now.",
            labels=["route"],
        )
        for priority_route in service.mux.routes:
            route_open.add_metric([priority_route.name], priority_route.load.active)
        yield route_open
        yield from self._targets()
        generation = GaugeMetricFamily(
            p + "config_generation", "How many times the config was loaded."
        )
        generation.add_metric([], service.generation.number)
        loaded = GaugeMetricFamily(
            p + "config_loaded_timestamp_seconds", "When the live config was loaded."
        )
        loaded.add_metric([], service.generation.loaded_at)
        failed = GaugeMetricFamily(
            p + "config_reload_failed", "1 while the last reload was refused."
        )
        failed.add_metric([], 1 if service.reload_error else 0)
        draining = GaugeMetricFamily(p + "draining", "1 while the service drains.")
        draining.add_metric([], 1 if service.state == "draining" else 0)
        paused = GaugeMetricFamily(
            p + "accept_paused",
            "1 while accepting is paused for want of file descriptors.",
        )
        paused.add_metric([], 1 if service.descriptors.paused else 0)
        pauses = CounterMetricFamily(
            p + "accept_pauses",
            "How often accepting was paused for want of file descriptors.",
        )
        pauses.add_metric([], service.descriptors.pauses)
        yield from (generation, loaded, failed, draining, paused, pauses)

    def _targets(self) -> Iterator[Metric]:
        p = "txcmux_"
        relay = CounterMetricFamily(
            p + "relay_connections",
            "Relayed connections, by outcome.",
            labels=["route", "outcome"],
        )
        relay_bytes = CounterMetricFamily(
            p + "relay_bytes",
            "Bytes relayed (added when a connection ends).",
            labels=["route", "direction"],
        )
        relay_open = GaugeMetricFamily(
            p + "relay_connections_open",
            "Relayed connections open now.",
            labels=["route"],
        )
        handshakes = CounterMetricFamily(
            p + "tls_handshakes", "TLS handshakes completed.", labels=["route"]
        )
        tls_failures = CounterMetricFamily(
            p + "tls_failures",
            "TLS connections closed before the handshake completed, by reason.",
            labels=["route", "reason"],
        )
        tls_bytes = CounterMetricFamily(
            p + "tls_bytes",
            "Bytes through TLS routes: in, as the clients sent them (encrypted);"
            " out, as the targets behind sent them (before encryption).",
            labels=["route", "direction"],
        )
        web_closed = CounterMetricFamily(
            p + "web_closed",
            "Connections a web route closed on bad or slow input, by reason"
            " (header_timeout, frame_too_large, timeout, http2_disabled).",
            labels=["route", "reason"],
        )
        from ..relay import RelayFactory
        from ..tls import TLSTerminationFactory
        from ..web import WebFactory

        connect: list[tuple[list[str], Histogram]] = []
        for name, factory in self._status.factories():
            stats = factory.stats if hasattr(factory, "stats") else Counter()
            if isinstance(factory, RelayFactory):
                connect.append(([name], factory.connect_seconds))
                for outcome in (
                    "connected",
                    "backend_failed",
                    "client_left",
                    "closed_clean",
                    "closed_error",
                    "idle_timeout",
                ):
                    relay.add_metric([name, outcome], stats[outcome])
                relay_bytes.add_metric([name, "up"], stats["bytes_up"])
                relay_bytes.add_metric([name, "down"], stats["bytes_down"])
                relay_open.add_metric([name], factory.active)
            elif isinstance(factory, WebFactory):
                for key, value in stats.items():
                    if key.startswith("closed."):
                        web_closed.add_metric(
                            [name, key.removeprefix("closed.")], value
                        )
            elif isinstance(factory, TLSTerminationFactory):
                handshakes.add_metric([name], stats["handshakes"])
                tls_bytes.add_metric([name, "in"], stats["bytes_in"])
                tls_bytes.add_metric([name, "out"], stats["bytes_out"])
                for key, value in stats.items():
                    if key.startswith("closed."):
                        tls_failures.add_metric(
                            [name, key.removeprefix("closed.")], value
                        )
        yield from (relay, relay_bytes, relay_open, handshakes, tls_failures)
        yield tls_bytes
        yield web_closed
        yield _histogram(
            p + "backend_connect_seconds",
            "Time a relay's backend took to accept.",
            ["route"],
            connect,
        )
