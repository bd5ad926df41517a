"""Matcher names from other packages, through the ``txcmux.matchers`` entry points.

The ``plugin_package`` next to this file is a real distribution; the
``ping_plugin`` fixture pip-installs it into the running environment, and a
config that names its matcher routes a real connection.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet import defer, endpoints, protocol, reactor
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.basic import LineReceiver
from twisted.trial import unittest

from tests.logs import captured_logs
from txcmux import ConfigurationError, matchers
from txcmux._plugins import (
    BUILTIN_MATCHERS,
    ENTRY_POINT_GROUP,
    build_registry,
    matcher_registry,
)
from txcmux.config import loads, make_service
from txcmux.matchers import Outcome

PLUGIN_SOURCE = Path(__file__).resolve().parent / "plugin_package"


def _entry_point(name: str, value: str) -> importlib.metadata.EntryPoint:
    return importlib.metadata.EntryPoint(
        name=name, value=value, group=ENTRY_POINT_GROUP
    )


def fake_ssh() -> matchers.FunctionMatcher:
    """A plugin that tries to take a built-in name."""
    return matchers.prefix(b"NOT-SSH")


def not_a_matcher() -> str:
    """A plugin whose function returns something else."""
    return "surprise"


# -- the registry ------------------------------------------------------------


def test_txcmux_registers_redis_and_postgres_through_entry_points() -> None:
    registry = matcher_registry()
    for name in ("redis", "postgres"):
        source = registry.get(name)
        assert source.source.startswith(f"entry point {name} = txcmux.matchers._extra")
        assert source.function().name == name
    assert "redis" not in BUILTIN_MATCHERS


def test_every_public_matcher_function_has_a_name() -> None:
    registry = matcher_registry()
    # A trailing underscore keeps a Python keyword's name usable (not_ is "not").
    public = {
        name.removesuffix("_"): getattr(matchers, name)
        for name in matchers.__all__
        if name.islower()
        and inspect.isfunction(getattr(matchers, name))
        and name not in ("any_", "parameters", "parse_client_hello")
    }
    assert set(public) <= set(registry.names())
    for name, function in public.items():
        assert registry.get(name).load() is function


def test_builtin_names_win_over_plugins() -> None:
    with captured_logs() as lines:
        registry = build_registry([_entry_point("ssh", "tests.test_plugins:fake_ssh")])
    assert registry.get("ssh").source == "built-in"
    assert registry.get("ssh").load() is matchers.ssh
    assert any(
        "tests.test_plugins:fake_ssh" in line and "built-ins win" in line
        for line in lines
    ), lines


def test_two_plugins_claiming_one_name_are_refused_when_used() -> None:
    with captured_logs() as lines:
        registry = build_registry(
            [
                _entry_point("memcached", "one.module:memcached"),
                _entry_point("memcached", "other.module:memcached"),
            ]
        )
    assert any("claimed by both" in line for line in lines), lines
    with pytest.raises(ConfigurationError) as raised:
        registry.get("memcached")
    assert "one.module:memcached" in str(raised.value)
    assert "other.module:memcached" in str(raised.value)
    text = """
    listen = ["tcp:0"]
    [[route]]
    name = "cache"
    match = ["memcached"]
    proxy = "tcp:host=127.0.0.1:port=11211"
    """
    with pytest.raises(ConfigurationError) as raised:
        loads(text.replace("\n    ", "\n"), source="c.toml", registry=registry)
    assert str(raised.value).startswith('c.toml: route "cache": key "match[0]"')


def test_same_entry_point_seen_twice_is_one() -> None:
    value = "txcmux.matchers._extra:redis"
    registry = build_registry([_entry_point("r", value), _entry_point("r", value)])
    assert registry.get("r").function().name == "redis"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("no_such_plugin_module:matcher", "does not load: ModuleNotFoundError"),
        ("tests.test_plugins:not_a_matcher", "is not a txcmux matcher"),
    ],
)
def test_a_broken_plugin_breaks_only_configs_using_it(
    value: str, expected: str
) -> None:
    registry = build_registry([_entry_point("broken", value)])
    route = '[[route]]\nname = "b"\nmatch = ["{}"]\nproxy = "tcp:host=h:port=1"\n'
    loads('listen = ["tcp:0"]\n' + route.format("ssh"), registry=registry)
    with pytest.raises(ConfigurationError) as raised:
        loads(
            'listen = ["tcp:0"]\n' + route.format("broken"),
            source="c.toml",
            registry=registry,
        )
    message = str(raised.value)
    assert message.startswith('c.toml: route "b": key "match[0]"'), message
    assert expected in message
    assert value in message  # names the entry point that is broken


# -- a real plugin distribution ----------------------------------------------


@pytest.fixture(scope="session")
def ping_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """pip-install tests/plugin_package where this process finds it.

    It goes into a private ``--target`` directory put on ``sys.path``, not
    into the shared environment: entry points are found the same way (by
    scanning ``sys.path`` for distribution metadata), and test runs side by
    side cannot uninstall it under each other.  An installed copy is
    tolerated (the registry counts one entry point seen twice once).
    """
    work = tmp_path_factory.mktemp("plugin")
    source = work / "plugin_package"  # a copy: no build/ in the checkout
    shutil.copytree(PLUGIN_SOURCE, source)
    target = work / "site"
    # Building without isolation (no download of build tools) needs setuptools
    # able to make a wheel: setuptools >= 70.1 can, older ones need ``wheel``.
    can_build_here = importlib.util.find_spec("setuptools") is not None and (
        importlib.util.find_spec("wheel") is not None
        or importlib.util.find_spec("setuptools.command.bdist_wheel") is not None
    )
    isolation = ["--no-build-isolation"] if can_build_here else []
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-input",
            "--disable-pip-version-check",
            *isolation,
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        timeout=120,
    )
    sys.path.append(str(target))
    importlib.invalidate_caches()
    yield
    sys.path.remove(str(target))
    sys.modules.pop("txcmux_ping_matcher", None)


PING_CONFIG = """\
listen = ["tcp:0:interface=127.0.0.1"]
[[route]]
name = "ping"
match = ["ping", { type = "ping", word = "HELO" }]
factory = "tests.test_plugins:Echo"
"""


class Echo(protocol.Factory):
    """Echoes lines: the ``factory`` target of the plugin test."""

    class protocol(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            self.sendLine(b"echo: " + line)


@pytest.mark.usefixtures("ping_plugin")
def test_plugin_is_listed_and_checked() -> None:
    source = matcher_registry().get("ping")
    assert source.source == (
        "entry point ping = txcmux_ping_matcher:ping (txcmux-ping-matcher)"
    )
    config = loads(PING_CONFIG, source="ping.toml")
    plain, helo = (m.matcher for m in config.route("ping").matchers)
    assert plain(b"PING 1").outcome is Outcome.MATCH
    assert helo(b"HELO x").outcome is Outcome.MATCH
    assert helo(b"PING").outcome is Outcome.NO_MATCH
    with pytest.raises(ConfigurationError) as raised:
        loads(PING_CONFIG.replace("word =", "wrod ="), source="ping.toml")
    assert 'matcher "ping" has no parameter "wrod"' in str(raised.value)
    assert 'did you mean "word"?' in str(raised.value)


class _Collect(protocol.Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.received.endswith(b"\n"):
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: object = None) -> None:
        self.done.callback(self.received)


@pytest.mark.usefixtures("ping_plugin")
class TestPluginRoutesARealConnection(unittest.TestCase):
    """A config naming the plugin's matcher routes a real TCP connection."""

    @defer.inlineCallbacks
    def test_ping_route(self):  # type: ignore[no-untyped-def]
        service = make_service(loads(PING_CONFIG, source="ping.toml"), reactor=reactor)
        service.startService()
        self.addCleanup(service.stopService)
        yield service.listeners[0].ready
        port = service.listeners[0].port.getHost().port
        for opening, expected in (
            (b"PING there\n", b"echo: PING there\n"),
            (b"HELO there\n", b"echo: HELO there\n"),
        ):
            client = _Collect()
            endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
            yield endpoints.connectProtocol(endpoint, client)
            client.transport.write(opening)
            received = yield client.done
            self.assertEqual(received, expected)
        self.assertEqual(service.mux.stats["routed.ping"], 2)


def test_memory_reactor_build_with_plugin_is_not_started(ping_plugin: None) -> None:
    service = make_service(loads(PING_CONFIG), reactor=MemoryReactorClock())
    assert service.mux.routes[0].name == "ping"
    assert not service.running


# -- parameter declarations --------------------------------------------------


@pytest.mark.usefixtures("ping_plugin")
def test_a_plugin_without_a_declaration_gets_what_toml_gives() -> None:
    text = PING_CONFIG.replace(
        'match = ["ping", { type = "ping", word = "HELO" }]',
        'match = [{ type = "echo_word", word = "hi", upper = true }]',
    )
    matcher = loads(text).route("ping").matchers[0].matcher
    # echo_word was given the str "hi" (it refuses bytes) and the bool true.
    assert matcher(b"HI there").outcome is Outcome.MATCH
    assert matcher(b"hi").outcome is Outcome.NO_MATCH
    with pytest.raises(ConfigurationError) as raised:
        loads(text.replace("upper =", "uper ="), source="ping.toml")
    assert 'matcher "echo_word" has no parameter "uper"' in str(raised.value)
    assert "its parameters are: word, upper" in str(raised.value)


@pytest.mark.usefixtures("ping_plugin")
def test_a_declared_plugin_parameter_is_checked() -> None:
    text = PING_CONFIG.replace('word = "HELO"', "word = 7")
    with pytest.raises(ConfigurationError) as raised:
        loads(text, source="ping.toml")
    assert 'key "match[1].word": found the integer 7, expected a string' in str(
        raised.value
    )


def test_every_matcher_of_txcmux_declares_its_parameters() -> None:
    from txcmux.matchers._params import parameters_of

    registry = matcher_registry()
    for name in [*BUILTIN_MATCHERS, "redis", "postgres"]:
        assert parameters_of(registry.get(name).load()) is not None, name


@pytest.mark.parametrize(
    ("declared", "problem"),
    [
        (matchers.Param("wrod", bytes), "'wrod' is not in its signature"),
        (
            matchers.Param("word", bytes),
            "declared with default REQUIRED, but the function's default is b'PING'",
        ),
        (
            matchers.Param("word", bytes, b"PONG"),
            "declared with default b'PONG', but the function's default is b'PING'",
        ),
        (
            matchers.Param("word", list[bytes], repeats=True),
            "'word' repeats, but is not its *word",
        ),
    ],
)
def test_a_declaration_the_signature_contradicts_is_refused(
    declared: matchers.Param, problem: str
) -> None:
    def ping(word: bytes = b"PING") -> matchers.FunctionMatcher:
        return matchers.prefix(word)

    with pytest.raises(TypeError) as raised:
        matchers.parameters(declared)(ping)
    assert problem in str(raised.value)
    assert matchers.parameters(matchers.Param("word", bytes, b"PING"))(ping) is ping


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        (("x", dict), "is not one of int, float, bool, str, bytes, object"),
        (("x", list[dict]), "is not one of int"),
        (("x", bytes, b"", True), "repeats and singular need a list[...] type"),
    ],
)
def test_a_parameter_of_an_unknown_type_is_refused(
    arguments: tuple[object, ...], problem: str
) -> None:
    with pytest.raises(TypeError) as raised:
        matchers.Param(*arguments)  # type: ignore[arg-type]
    assert problem in str(raised.value)


def test_what_the_registry_warns_is_kept() -> None:
    with captured_logs():
        registry = build_registry([_entry_point("ssh", "tests.test_plugins:fake_ssh")])
    assert registry.warnings == [
        "matcher plugin entry point ssh = tests.test_plugins:fake_ssh (unknown) is"
        " ignored: 'ssh' is a built-in matcher name, and built-ins win"
    ]
