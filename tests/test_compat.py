"""txcmux._compat: the private Twisted names txcmux relies on, and their checks.

The installed Twisted must have every one; a Twisted that lacks one (a
monkeypatched class or module standing in for a future release) must get an
error naming it, what it is for and the tested Twisted range.
"""

from __future__ import annotations

import importlib
import signal
import sys
import types

import pytest
from twisted.internet import endpoints, task
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols import tls
from twisted.web import http

from txcmux import ConfigurationError, TxcmuxError, _compat
from txcmux._errors import TwistedCompatibilityError


def test_the_installed_twisted_has_every_private_name() -> None:
    assert _compat.missing(_compat.ALL) == []
    assert _compat.SPLICE_READY
    proxy, factory = _compat.channel_proxy()
    assert proxy is http._GenericHTTPChannelProtocol
    assert factory is http._genericHTTPChannelProtocolFactory
    assert _compat.h2_connection_class().__name__ == "H2Connection"


def test_every_entry_says_what_it_is_for() -> None:
    names = [entry.name for entry in _compat.ALL]
    assert len(names) == len(set(names))
    for entry in _compat.ALL:
        assert entry.name.startswith("twisted."), entry
        assert entry.used_for and not entry.used_for.endswith("."), entry
        assert str(entry) == f"{entry.name}: {entry.used_for}"


def test_a_missing_tls_attribute_is_named_with_its_use_and_the_tested_range(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(tls.TLSMemoryBIOProtocol, "_flushSendBIO")
    with pytest.raises(TwistedCompatibilityError) as raised:
        _compat.require("txcmux.tls", _compat.TLS_HALF_CLOSE)
    message = str(raised.value)
    for fragment in (
        "txcmux.tls cannot work with Twisted " + _compat.twisted_version(),
        "twisted.protocols.tls.TLSMemoryBIOProtocol._flushSendBIO",
        "send the close_notify alert",
        "tested with Twisted 26.10",
        "since 24.7",
    ):
        assert fragment in message, message
    assert "_write" not in message  # only what is missing is named
    assert isinstance(raised.value, TxcmuxError)
    assert isinstance(raised.value, ImportError)


def test_importing_tls_on_such_a_twisted_fails_at_import(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(tls.TLSMemoryBIOProtocol, "_handshakeDone")
    for name in ("txcmux.tls", "txcmux._tls._factory"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(TwistedCompatibilityError, match="_handshakeDone"):
        importlib.import_module("txcmux.tls")


def test_an_instance_attribute_is_checked_in_the_code_that_sets_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def changed_init(self: object, *arguments: object) -> None:
        self.aggregate = None  # type: ignore[attr-defined]

    monkeypatch.setattr(tls.BufferingTLSTransport, "__init__", changed_init)
    assert _compat.missing(_compat.TLS_HALF_CLOSE) == [
        "twisted.protocols.tls.BufferingTLSTransport.__init__ using _aggregator"
    ]


def test_a_module_without_the_class_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    emptied = types.ModuleType("twisted.web._http2")
    monkeypatch.setitem(sys.modules, "twisted.web._http2", emptied)
    entry = _compat.H2_STREAM_CONNECTION
    assert entry.check() == ["twisted.web._http2.H2Stream.__init__"]


def test_without_the_forwarder_splicing_is_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(endpoints, "_WrappingProtocol")
    lacking = _compat.missing(_compat.SPLICE)
    assert lacking == [
        "twisted.internet.endpoints._WrappingProtocol",
        "twisted.internet.endpoints._WrappingProtocol.__init__",
    ]


def test_a_channel_proxy_that_keeps_its_channel_elsewhere_is_not_unwrapped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Changed:
        def __init__(self, original: object) -> None:
            self.inner = original

    monkeypatch.setattr(http, "_GenericHTTPChannelProtocol", Changed)
    assert _compat.missing(_compat.WEB_CHANNEL) == [
        "twisted.web.http._GenericHTTPChannelProtocol._channel"
    ]
    assert _compat.channel_proxy() == (None, None)


def test_a_changed_h2connection_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import twisted.web._http2

    class Changed:
        def __init__(self) -> None:
            pass

        def dataReceived(self, data: bytes) -> None:
            pass

    monkeypatch.setattr(twisted.web._http2, "H2Connection", Changed)
    with pytest.raises(ConfigurationError) as raised:
        _compat.h2_connection_class()
    message = str(raised.value)
    for fragment in ("site", "timeOut", "IPushProducer", "__init__(reactor)"):
        assert fragment in message, message
    assert "dataReceived" not in message
    assert "http2=False" in message and "24.7" in message and "26.10" in message


def test_sigterm_exit_is_cleared_and_nothing_else() -> None:
    class Reactor:
        _exitSignal: int | None = signal.SIGTERM

    stopped = Reactor()
    _compat.clear_sigterm_exit(stopped)
    assert stopped._exitSignal is None
    interrupted = Reactor()
    interrupted._exitSignal = signal.SIGINT
    _compat.clear_sigterm_exit(interrupted)
    assert interrupted._exitSignal == signal.SIGINT
    _compat.clear_sigterm_exit(object())  # no such attribute: nothing happens


def test_backend_endpoints_are_named_for_logs() -> None:
    clock = task.Clock()
    assert (
        _compat.endpoint_address(endpoints.TCP4ClientEndpoint(clock, "10.1.2.3", 22))
        == "tcp:10.1.2.3:22"
    )
    by_name = endpoints.HostnameEndpoint(MemoryReactorClock(), "db.example", 5432)
    assert _compat.endpoint_address(by_name) == "tcp:db.example:5432"
    assert (
        _compat.endpoint_address(endpoints.UNIXClientEndpoint(clock, "/run/a.sock"))
        == "unix:/run/a.sock"
    )
    assert _compat.endpoint_address(object()) is None
