"""Config files: every kind of mistake gives one clear message; valid files build.

Each error test checks that the message names the file, the route and the
key, says what was found and what was expected, and offers the near miss.
"""

from __future__ import annotations

import inspect
import re
import sys
import textwrap
from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.web.resource import Resource

from tests.captures import capture, http2_opening
from tests.tls_support import pki
from txcmux import ConfigurationError
from txcmux._config._schema import DOCUMENTED_KEYS, TLS_KEYS
from txcmux.config import (
    BUILTIN_MATCHERS,
    FactoryTarget,
    GrpcTarget,
    ProxyTarget,
    StaticTarget,
    TLSTarget,
    WebTarget,
    load,
    loads,
    make_service,
)
from txcmux.matchers import Outcome
from txcmux.matchers._params import REQUIRED, parameters_of

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

WEB_ROUTE = """
[[route]]
name = "web"
match = ["http1", "http2"]
web = "txcmux.demo:resource"
"""

SSH_ROUTE = """
[[route]]
name = "ssh"
match = ["ssh"]
proxy = "tcp:host=127.0.0.1:port=22"
"""


def write(tmp_path: Path, text: str, name: str = "cmux.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str) -> str:
    """The message of the ConfigurationError that loading ``text`` raises."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigurationError) as raised:
        load(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message
    return message


def assert_says(message: str, *fragments: str) -> None:
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# -- the top level -----------------------------------------------------------


def test_unknown_top_level_key(tmp_path: Path) -> None:
    message = error_of(tmp_path, 'listen = ["tcp:0"]\nsniff_timout = 2\n' + WEB_ROUTE)
    assert_says(
        message,
        'unknown key "sniff_timout"',
        "expected one of listen, sniff_timeout",
        'did you mean "sniff_timeout"?',
    )


def test_wrong_type(tmp_path: Path) -> None:
    message = error_of(
        tmp_path, 'listen = ["tcp:0"]\nsniff_timeout = "5"\n' + WEB_ROUTE
    )
    assert_says(
        message,
        'key "sniff_timeout"',
        'found the string "5"',
        "expected a positive number of seconds",
    )


@pytest.mark.parametrize(
    ("line", "key", "found"),
    [
        ("max_sniff_bytes = true", "max_sniff_bytes", "the boolean true"),
        ("max_sniff_bytes = 0", "max_sniff_bytes", "the integer 0"),
        ("sniff_timeout = -1", "sniff_timeout", "the integer -1"),
        ('on_timeout = ["ssh"]', "on_timeout", "an array of 1"),
    ],
)
def test_wrong_types(tmp_path: Path, line: str, key: str, found: str) -> None:
    message = error_of(tmp_path, f'listen = ["tcp:0"]\n{line}\n' + SSH_ROUTE)
    assert_says(message, f'key "{key}"', f"found {found}", "expected")


def test_listen_must_be_endpoint_strings(tmp_path: Path) -> None:
    message = error_of(tmp_path, "listen = 8080\n" + WEB_ROUTE)
    assert_says(
        message,
        'key "listen"',
        "found the integer 8080",
        "expected a non-empty array of server endpoint strings",
    )


def test_toml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    message = error_of(tmp_path, 'listen = ["tcp:0"]\n[[route]\nname = "x"\n')
    assert_says(message, "not valid TOML", "line 2", "column")


def test_missing_file() -> None:
    with pytest.raises(ConfigurationError) as raised:
        load("/nonexistent/cmux.toml")
    assert_says(
        str(raised.value), "/nonexistent/cmux.toml", "cannot read", "No such file"
    )


def test_no_routes(tmp_path: Path) -> None:
    message = error_of(tmp_path, 'listen = ["tcp:0"]\n')
    assert_says(message, "no [[route]] table", "expected at least one")


# -- endpoint strings --------------------------------------------------------


def test_unknown_server_endpoint_type(tmp_path: Path) -> None:
    message = error_of(tmp_path, 'listen = ["tcpp:8080"]\n' + WEB_ROUTE)
    assert_says(
        message,
        'key "listen[0]"',
        '"tcpp:8080" is not a Twisted server endpoint string',
        "expected one of tcp, unix",
        'did you mean "tcp"?',
    )


def test_bad_server_endpoint_parameters(tmp_path: Path) -> None:
    message = error_of(tmp_path, 'listen = ["tcp:0", "tcp:http"]\n' + WEB_ROUTE)
    assert_says(
        message,
        'key "listen[1]"',
        '"tcp:http" is not a valid Twisted server endpoint string',
        'expected something like "tcp:8080"',
    )


def test_endpoint_strings_are_checked_without_listening(tmp_path: Path) -> None:
    # A port that is surely in use by the time we check is not an error:
    # checking never binds.  (Port 1 would need root to bind.)
    config = load(write(tmp_path, 'listen = ["tcp:1", "unix:cmux.sock"]\n' + WEB_ROUTE))
    assert config.listen == ("tcp:1", "unix:cmux.sock")
    assert not (tmp_path / "cmux.sock").exists()


def test_bad_client_endpoint(tmp_path: Path) -> None:
    route = SSH_ROUTE.replace("tcp:host=127.0.0.1:port=22", "tcp:host=127.0.0.1")
    message = error_of(tmp_path, 'listen = ["tcp:0"]\n' + route)
    assert_says(
        message,
        'route "ssh"',
        'key "proxy"',
        '"tcp:host=127.0.0.1" is not a valid Twisted client endpoint string',
        "port",
        'expected something like "tcp:host=127.0.0.1:port=22"',
    )


def test_unknown_client_endpoint_type(tmp_path: Path) -> None:
    route = SSH_ROUTE.replace("tcp:host", "tpc:host")
    message = error_of(tmp_path, 'listen = ["tcp:0"]\n' + route)
    assert_says(message, 'route "ssh"', 'key "proxy"', 'did you mean "tcp"?')


def test_listen_option_replaces_and_is_checked(tmp_path: Path) -> None:
    path = write(tmp_path, 'listen = ["tcp:8080"]\n' + WEB_ROUTE)
    assert load(path, listen=["tcp:0"]).listen == ("tcp:0",)
    with pytest.raises(ConfigurationError) as raised:
        load(path, listen=["tcp:0", "tpc:1"])
    assert_says(
        str(raised.value), "the command line", '"--listen[1]"', 'did you mean "tcp"?'
    )


# -- routes ------------------------------------------------------------------


def test_unknown_route_key(tmp_path: Path) -> None:
    route = SSH_ROUTE.replace("proxy =", "proxi =")
    message = error_of(tmp_path, 'listen = ["tcp:0"]\n' + route)
    assert_says(
        message,
        'route "ssh"',
        'unknown key "proxi"',
        "expected one of name, match, web",
        'did you mean "proxy"?',
    )


def test_missing_target(tmp_path: Path) -> None:
    route = '[[route]]\nname = "ssh"\nmatch = ["ssh"]\n'
    message = error_of(tmp_path, 'listen = ["tcp:0"]\n' + route)
    assert_says(
        message,
        'route "ssh"',
        "missing target",
        "expected exactly one of the keys web, static, wsgi, asgi, proxy, grpc,"
        " factory, tls",
    )


def test_two_targets(tmp_path: Path) -> None:
    route = SSH_ROUTE + 'factory = "tests.test_config:echo_factory"\n'
    message = error_of(tmp_path, 'listen = ["tcp:0"]\n' + route)
    assert_says(
        message, 'route "ssh"', "two targets, proxy and factory", "exactly one of"
    )


def test_missing_name_and_match(tmp_path: Path) -> None:
    message = error_of(tmp_path, 'listen = ["tcp:0"]\n[[route]]\nmatch = ["ssh"]\n')
    assert_says(message, "route #1", 'missing key "name"')
    message = error_of(tmp_path, 'listen = ["tcp:0"]\n[[route]]\nname = "x"\n')
    assert_says(message, 'route "x"', 'missing key "match"', "expected a list")


def test_duplicate_route_names(tmp_path: Path) -> None:
    message = error_of(tmp_path, 'listen = ["tcp:0"]\n' + SSH_ROUTE + SSH_ROUTE)
    assert_says(message, 'route "ssh"', 'two routes are named "ssh"')


def test_unknown_route_name_in_routes(tmp_path: Path) -> None:
    text = 'listen = ["tcp:0"]\nroutes = ["ssh", "wbe"]\n' + SSH_ROUTE + WEB_ROUTE
    message = error_of(tmp_path, text)
    assert_says(
        message,
        'key "routes[1]"',
        'no route is named "wbe"',
        "the routes are ssh, web",
        'did you mean "web"?',
    )


def test_unknown_route_name_in_on_timeout(tmp_path: Path) -> None:
    text = 'listen = ["tcp:0"]\non_timeout = "sh"\n' + SSH_ROUTE + WEB_ROUTE
    message = error_of(tmp_path, text)
    assert_says(
        message, 'key "on_timeout"', 'no route is named "sh"', 'did you mean "ssh"?'
    )


def test_on_timeout_must_be_on_the_listeners(tmp_path: Path) -> None:
    text = (
        'listen = ["tcp:0"]\nroutes = ["web"]\non_timeout = "ssh"\n'
        + SSH_ROUTE
        + WEB_ROUTE
    )
    message = error_of(tmp_path, text)
    assert_says(message, 'key "on_timeout"', "the routes are web")


# -- matchers ----------------------------------------------------------------


def test_unknown_matcher(tmp_path: Path) -> None:
    route = WEB_ROUTE.replace('"http1"', '"htp1"')
    message = error_of(tmp_path, 'listen = ["tcp:0"]\n' + route)
    assert_says(
        message,
        'route "web"',
        'key "match[0]"',
        'unknown matcher "htp1"',
        "expected one of all_of, amqp, any, any_of, grpc, http1",
        'did you mean "http1"?',
    )


def test_unknown_matcher_parameter(tmp_path: Path) -> None:
    route = """
    [[route]]
    name = "grpc-web"
    match = [{ type = "http2_header", name = "content-type", valeu = "x" }]
    proxy = "tcp:host=127.0.0.1:port=9"
    """
    message = error_of(tmp_path, 'listen = ["tcp:0"]\n' + textwrap.dedent(route))
    assert_says(
        message,
        'route "grpc-web"',
        'key "match[0].valeu"',
        'matcher "http2_header" has no parameter "valeu"',
        "its parameters are: name, value, prefix, send_settings, max_bytes",
        'did you mean "value"?',
    )


def test_matcher_refusing_its_parameters(tmp_path: Path) -> None:
    route = SSH_ROUTE.replace('["ssh"]', '[{ type = "tls", versions = ["1.4"] }]')
    message = error_of(tmp_path, 'listen = ["tcp:0"]\n' + route)
    assert_says(
        message,
        'route "ssh"',
        'key "match[0]"',
        'matcher "tls" refused its parameters',
        "1.4",
        "its parameters are: versions, sni, alpn, max_bytes",
    )


@pytest.mark.parametrize(
    ("table", "key", "expected"),
    [
        (
            '{ type = "http1", max_request_line = "8k" }',
            "max_request_line",
            'found the string "8k", expected an integer',
        ),
        (
            '{ type = "http2_header", name = "a", value = "b", prefix = "yes" }',
            "prefix",
            'found the string "yes", expected true or false',
        ),
        (
            '{ type = "prefix", values = ["A", 1] }',
            "values[1]",
            "found the integer 1, expected a string",
        ),
    ],
)
def test_matcher_parameter_types(
    tmp_path: Path, table: str, key: str, expected: str
) -> None:
    route = SSH_ROUTE.replace('["ssh"]', f"[{table}]")
    message = error_of(tmp_path, 'listen = ["tcp:0"]\n' + route)
    assert_says(message, 'route "ssh"', f'key "match[0].{key}"', expected)


def test_matcher_needing_parameters_named_bare(tmp_path: Path) -> None:
    route = SSH_ROUTE.replace('["ssh"]', '["prefix"]')
    message = error_of(tmp_path, 'listen = ["tcp:0"]\n' + route)
    assert_says(message, 'matcher "prefix"', "write it as a table")


def test_matcher_table_without_type(tmp_path: Path) -> None:
    route = SSH_ROUTE.replace('["ssh"]', '[{ value = "PING" }]')
    message = error_of(tmp_path, 'listen = ["tcp:0"]\n' + route)
    assert_says(message, 'key "match[0]"', 'needs "type"')


def test_prefix_value_and_values_are_bytes(tmp_path: Path) -> None:
    text = """
    listen = ["tcp:0"]
    [[route]]
    name = "ping"
    match = [{ type = "prefix", value = "PING" },
             { type = "prefix", values = ["\\u0080\\u0001", "ECHO"] }]
    proxy = "tcp:host=127.0.0.1:port=9"
    """
    route = load(write(tmp_path, text)).route("ping")
    one, two = (m.matcher for m in route.matchers)
    assert one(b"PING\r\n").outcome is Outcome.MATCH
    assert one(b"PONG").outcome is Outcome.NO_MATCH
    # Strings are bytes written as Latin-1: \u0080 is the byte 0x80.
    assert two(b"\x80\x01\x00").outcome is Outcome.MATCH
    assert two(b"\xc2\x80").outcome is Outcome.NO_MATCH
    assert two(b"ECHO").outcome is Outcome.MATCH


def test_prefix_value_and_values_together(tmp_path: Path) -> None:
    route = SSH_ROUTE.replace(
        '["ssh"]', '[{ type = "prefix", value = "A", values = ["B"] }]'
    )
    message = error_of(tmp_path, 'listen = ["tcp:0"]\n' + route)
    assert_says(message, 'takes "values" or "value", not both')


def test_non_latin1_bytes(tmp_path: Path) -> None:
    route = SSH_ROUTE.replace('["ssh"]', '[{ type = "prefix", value = "€" }]')
    message = error_of(tmp_path, 'listen = ["tcp:0"]\n' + route)
    assert_says(message, 'key "match[0].value"', "U+0000 to U+00FF")


COMBINED = """
listen = ["tcp:0"]
[[route]]
name = "admin"
match = [{ type = "all_of", of = [
    { type = "tls", sni = "localhost" },
    { type = "remote_ip", cidrs = ["10.0.0.0/8", "fd00::/8"] },
] }]
proxy = "tcp:host=127.0.0.1:port=9"
[[route]]
name = "others"
match = [{ type = "not", of = { type = "any_of", of = ["ssh", "mqtt"] } }]
proxy = "tcp:host=127.0.0.1:port=9"
"""


def test_combinators_nest_as_tables(tmp_path: Path) -> None:
    config = load(write(tmp_path, COMBINED))
    admin = config.route("admin").matchers[0].matcher
    others = config.route("others").matchers[0].matcher
    hello = capture("curl-tls-clienthello.bin")
    inside = admin.bind(IPv4Address("TCP", "10.0.0.1", 1), None)  # type: ignore[attr-defined]
    outside = admin.bind(IPv4Address("TCP", "192.0.2.1", 1), None)  # type: ignore[attr-defined]
    assert inside(hello).outcome is Outcome.MATCH
    assert outside(hello).outcome is Outcome.NO_MATCH
    assert others(capture("openssh-client.bin")).outcome is Outcome.NO_MATCH
    assert others(capture("curl-mqtt.bin")).outcome is Outcome.NO_MATCH
    assert others(capture("curl-http1.1.bin")).outcome is Outcome.MATCH


@pytest.mark.parametrize(
    ("match", "key", "expected"),
    [
        ('{ type = "all_of", of = [] }', "match[0].of", "needs at least one matcher"),
        (
            '{ type = "all_of", of = ["ssh", { type = "remote_ip", cidr = 10 }] }',
            "match[0].of[1].cidr",
            "found the integer 10, expected a string",
        ),
        (
            '{ type = "any_of", of = ["sh"] }',
            "match[0].of[0]",
            'unknown matcher "sh"; expected one of',
        ),
        (
            '{ type = "not", of = ["ssh", "tls"] }',
            "match[0].of",
            "takes one matcher (a name or a table), not an array",
        ),
        ('{ type = "remote_ip", cidrs = ["10.0.0.0/33"] }', "match[0]", "/33"),
        ('{ type = "local_port", port = 70000 }', "match[0]", "not a port"),
        ('{ type = "regex", pattern = "PING$", max_bytes = 8 }', "match[0]", "$"),
        ('{ type = "websocket", path = "chat" }', "match[0]", "must start with '/'"),
    ],
)
def test_new_matchers_explain_their_mistakes(
    tmp_path: Path, match: str, key: str, expected: str
) -> None:
    route = SSH_ROUTE.replace('["ssh"]', f"[{match}]")
    message = error_of(tmp_path, 'listen = ["tcp:0"]\n' + route)
    assert_says(message, 'route "ssh"', f'key "{key}"', expected)


def test_nested_typos_get_a_suggestion(tmp_path: Path) -> None:
    route = SSH_ROUTE.replace('["ssh"]', '[{ type = "not", of = "mqt" }]')
    message = error_of(tmp_path, 'listen = ["tcp:0"]\n' + route)
    assert_says(message, 'key "match[0].of"', 'did you mean "mqtt"?')


GRPC_HEADER = (
    '{ type = "http2_header", name = "content-type", value = "application/grpc",'
    " prefix = true }"
)


def test_header_matcher_table_matches_real_grpc_clients(tmp_path: Path) -> None:
    text = """
    listen = ["tcp:0"]
    [[route]]
    name = "grpc"
    match = [GRPC_HEADER]
    proxy = "tcp:host=127.0.0.1:port=50051"
    """.replace("GRPC_HEADER", GRPC_HEADER)
    matcher = load(write(tmp_path, text)).route("grpc").matchers[0].matcher
    assert matcher(http2_opening("grpcio-unary")).outcome is Outcome.MATCH
    assert matcher(http2_opening("curl-h2c-prior-knowledge")).outcome is (
        Outcome.NO_MATCH
    )
    assert matcher(capture("curl-http1.1.bin")).outcome is Outcome.NO_MATCH


# -- targets -----------------------------------------------------------------


def test_import_path_module_missing(tmp_path: Path) -> None:
    route = WEB_ROUTE.replace("txcmux.demo:resource", "no_such_module.site:resource")
    message = error_of(tmp_path, 'listen = ["tcp:0"]\n' + route)
    assert_says(
        message,
        'route "web"',
        'key "web"',
        'cannot import "no_such_module.site:resource"',
        "No module named 'no_such_module'",
    )


def test_import_path_attribute_missing(tmp_path: Path) -> None:
    route = WEB_ROUTE.replace("txcmux.demo:resource", "txcmux.demo:resourse")
    message = error_of(tmp_path, 'listen = ["tcp:0"]\n' + route)
    assert_says(
        message,
        'route "web"',
        'key "web"',
        'txcmux.demo has no attribute "resourse"',
        'did you mean "resource"?',
    )


def test_import_path_without_colon(tmp_path: Path) -> None:
    route = WEB_ROUTE.replace("txcmux.demo:resource", "txcmux.demo.resource")
    message = error_of(tmp_path, 'listen = ["tcp:0"]\n' + route)
    assert_says(message, 'key "web"', 'expected an import path "module:attribute"')


def test_import_path_that_raises(tmp_path: Path) -> None:
    (tmp_path / "broken_cmux_app.py").write_text("raise RuntimeError('no db')\n")
    route = WEB_ROUTE.replace("txcmux.demo:resource", "broken_cmux_app:resource")
    message = error_of(tmp_path, 'listen = ["tcp:0"]\n' + route)
    assert_says(message, 'key "web"', "RuntimeError: no db")


def test_grpc_functions_must_be_callable(tmp_path: Path) -> None:
    route = (
        '[[route]]\nname = "g"\nmatch = ["grpc"]\ngrpc = ["txcmux.demo:SERVICE_NAME"]\n'
    )
    message = error_of(tmp_path, 'listen = ["tcp:0"]\n' + route)
    assert_says(message, 'route "g"', 'key "grpc[0]"', "expected a callable f(server)")


def test_static_directory_missing(tmp_path: Path) -> None:
    route = '[[route]]\nname = "files"\nmatch = ["http1"]\nstatic = "www"\n'
    message = error_of(tmp_path, 'listen = ["tcp:0"]\n' + route)
    assert_says(message, 'route "files"', 'key "static"', "www is not a directory")


def test_tls_unknown_key_and_missing_file(tmp_path: Path) -> None:
    route = """
    [[route]]
    name = "tls"
    match = ["tls"]
    tls = { certificate = "server.pem", key = "server.key", route = ["web"] }
    """
    text = 'listen = ["tcp:0"]\n' + textwrap.dedent(route) + WEB_ROUTE
    message = error_of(tmp_path, text)
    assert_says(
        message,
        'route "tls"',
        'key "tls"',
        'unknown key "route" in the tls table',
        'did you mean "routes"?',
    )
    message = error_of(tmp_path, text.replace("route =", "routes ="))
    assert_says(
        message, 'route "tls"', 'key "tls.certificate"', "server.pem does not exist"
    )


def test_tls_routes_must_exist_and_not_be_tls(tmp_path: Path) -> None:
    files = pki()
    route = f"""
    [[route]]
    name = "tls"
    match = ["tls"]
    [route.tls]
    certificate = "{files.server_certificate}"
    key = "{files.server_key}"
    routes = ["webb"]
    """
    text = 'listen = ["tcp:0"]\n' + textwrap.dedent(route) + WEB_ROUTE
    message = error_of(tmp_path, text)
    assert_says(
        message,
        'route "tls"',
        'key "tls.routes[0]"',
        'no route is named "webb"',
        'did you mean "web"?',
    )
    message = error_of(tmp_path, text.replace('"webb"', '"tls"'))
    assert_says(message, 'key "tls.routes[0]"', "TLS in TLS is not supported")


def test_build_time_errors_name_the_route(tmp_path: Path) -> None:
    route = WEB_ROUTE.replace("txcmux.demo:resource", "tests.test_config:not_a_site")
    config = load(write(tmp_path, 'listen = ["tcp:0"]\n' + route))
    with pytest.raises(ConfigurationError) as raised:
        make_service(config, reactor=MemoryReactorClock())
    assert_says(
        str(raised.value),
        str(tmp_path / "cmux.toml"),
        'route "web"',
        'key "web"',
        "not_a_site() returned 42",
        "expected an IResource",
    )


# -- valid configs -----------------------------------------------------------


def echo_factory() -> object:
    """A protocol factory built by a callable (for the ``factory`` target)."""
    from twisted.internet.protocol import Factory, Protocol

    return Factory.forProtocol(Protocol)


def not_a_site() -> int:
    """A ``web`` callable that returns something else."""
    return 42


def add_nothing(server: object) -> None:
    """A gRPC registration callable that registers nothing."""


FULL = """
listen = ["tcp:0", "unix:{tmp}/cmux.sock"]
sniff_timeout = 2.5
max_sniff_bytes = 4096
on_timeout = "ssh"
routes = ["tls", "grpc", "web", "ssh", "files", "echo"]

[grpc_server]
max_workers = 4
options = {{ "grpc.max_receive_message_length" = 1048576 }}

[[route]]
name = "tls"
match = [{{ type = "tls" }}]
tls = {{ certificate = "{cert}", key = "{key}", routes = ["grpc", "web"] }}

[[route]]
name = "grpc"
match = ["grpc"]
grpc = ["txcmux.demo:add_services", "tests.test_config:add_nothing"]

[[route]]
name = "web"
match = ["http1", "http2"]
web = "local_cmux_site:Root"

[[route]]
name = "ssh"
match = ["ssh"]
proxy = "tcp:host=127.0.0.1:port=22"

[[route]]
name = "files"
match = [{{ type = "http1_header", name = "host", value = "files.example" }}]
static = "www"

[[route]]
name = "echo"
match = [{{ type = "prefix", value = "ECHO " }}]
factory = "tests.test_config:echo_factory"
"""


def full_config(tmp_path: Path) -> Path:
    files = pki()
    (tmp_path / "www").mkdir()
    # A module next to the config file imports while the file is checked.
    (tmp_path / "local_cmux_site.py").write_text(
        "from twisted.web.resource import Resource\nclass Root(Resource):\n    pass\n"
    )
    return write(
        tmp_path,
        FULL.format(tmp=tmp_path, cert=files.server_certificate, key=files.server_key),
    )


def test_full_config_checks(tmp_path: Path) -> None:
    config = load(full_config(tmp_path))
    assert config.listen == ("tcp:0", f"unix:{tmp_path}/cmux.sock")
    assert (config.sniff_timeout, config.max_sniff_bytes) == (2.5, 4096)
    assert config.on_timeout == "ssh"
    assert config.listener_routes == ("tls", "grpc", "web", "ssh", "files", "echo")
    kinds = {route.name: type(route.target) for route in config.routes}
    assert kinds == {
        "tls": TLSTarget,
        "grpc": GrpcTarget,
        "web": WebTarget,
        "ssh": ProxyTarget,
        "files": StaticTarget,
        "echo": FactoryTarget,
    }
    assert config.route("web").target.obj.__name__ == "Root"  # type: ignore[union-attr]
    assert config.route("files").target == StaticTarget(tmp_path / "www")
    assert config.grpc_server.max_workers == 4
    assert config.summary() == "2 listeners, 6 routes"
    # ... and sys.path is as it was afterwards.
    assert str(tmp_path) not in sys.path


def test_full_config_builds(tmp_path: Path) -> None:
    from txcmux.grpcserver import GrpcServer
    from txcmux.relay import RelayFactory
    from txcmux.tls import TLSTerminationFactory
    from txcmux.web import WebFactory

    reactor = MemoryReactorClock()
    service = make_service(load(full_config(tmp_path)), reactor=reactor)
    mux = service.mux
    assert [route.name for route in mux.routes] == [
        "tls",
        "grpc",
        "web",
        "ssh",
        "files",
        "echo",
    ]
    assert (mux.sniff_timeout, mux.max_sniff_bytes, mux.on_timeout) == (
        2.5,
        4096,
        "ssh",
    )
    factories = {route.name: route.factory for route in mux.routes}
    assert isinstance(factories["web"], WebFactory)
    assert isinstance(factories["web"].site.resource, Resource)
    assert isinstance(factories["files"], WebFactory)
    assert isinstance(factories["ssh"], RelayFactory)
    assert isinstance(factories["grpc"], RelayFactory)
    assert isinstance(service.grpc_server, GrpcServer)
    assert len(service.grpc_server.add_services) == 2
    assert service.grpc_server.max_workers == 4
    tls = factories["tls"]
    assert isinstance(tls, TLSTerminationFactory)
    # ALPN from the inner routes: h2 (gRPC, HTTP/2) and http/1.1 (HTTP/1).
    assert tls.alpn == ("h2", "http/1.1")
    inner = tls.inner
    assert [route.name for route in inner.routes] == ["grpc", "web"]  # type: ignore[attr-defined]
    # The same route's factory is shared by the plain and the TLS detector.
    assert inner.route("web").factory is factories["web"]  # type: ignore[attr-defined]
    assert [listener.description for listener in service.listeners] == [
        "tcp:0",
        f"unix:{tmp_path}/cmux.sock",
    ]
    assert not reactor.tcpServers  # built, not listening


@pytest.mark.parametrize(
    ("target", "alpn"),
    [
        ('grpc = ["txcmux.demo:add_services"]', ("h2",)),
        ('web = "txcmux.demo:resource"', ("h2", "http/1.1")),
        ('proxy = "tcp:host=127.0.0.1:port=1"', ()),
    ],
)
def test_tls_alpn_follows_the_inner_routes(
    tmp_path: Path, target: str, alpn: tuple[str, ...]
) -> None:
    # The inner route matches "any", so only its target tells ALPN.
    files = pki()
    text = f"""
    listen = ["tcp:0"]
    routes = ["tls"]
    [[route]]
    name = "tls"
    match = ["tls"]
    [route.tls]
    certificate = "{files.server_certificate}"
    key = "{files.server_key}"
    routes = ["grpc"]
    handshake_timeout = 3

    [[route]]
    name = "grpc"
    match = ["any"]
    {target}
    """
    config = load(write(tmp_path, text))
    assert config.listener_routes == ("tls",)
    service = make_service(config, reactor=MemoryReactorClock())
    tls = service.mux.route("tls").factory
    assert tls.alpn == alpn  # type: ignore[attr-defined]
    assert tls.handshake_timeout == 3  # type: ignore[attr-defined]


def test_default_route_order_is_file_order(tmp_path: Path) -> None:
    config = load(write(tmp_path, 'listen = ["tcp:0"]\n' + SSH_ROUTE + WEB_ROUTE))
    assert config.listener_routes == ("ssh", "web")
    assert config.on_timeout is None
    assert (config.sniff_timeout, config.max_sniff_bytes) == (5.0, 16384)


def test_loads_names_its_source() -> None:
    with pytest.raises(ConfigurationError) as raised:
        loads("listen = [", source="inline")
    assert str(raised.value).startswith("inline: not valid TOML")


# -- the reference documentation ---------------------------------------------


def documented_keys() -> set[str]:
    """The keys in docs/configuration.md: first cells that are `code`."""
    keys = set()
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        found = re.match(r"\|\s*`([^`]+)`\s*\|", line)
        if found:
            keys.add(found.group(1))
    return keys


def test_every_accepted_key_is_documented_and_no_more() -> None:
    from txcmux.tls import TLSTerminationFactory

    # The tls table's optional keys are TLSTerminationFactory's keywords.
    keywords = inspect.signature(TLSTerminationFactory).parameters
    optional = [key for key, spec in TLS_KEYS.items() if spec.default is None]
    assert optional == [
        "alpn",
        "sni",
        "client_ca",
        "client_certificates",
        "handshake_timeout",
    ]
    assert set(optional) <= set(keywords)
    accepted = set(DOCUMENTED_KEYS)
    documented = documented_keys()
    assert accepted - documented == set(), "accepted but not documented"
    assert documented - accepted == set(), "documented but not accepted"


def test_the_documented_example_is_valid(tmp_path: Path) -> None:
    text = DOCS.read_text(encoding="utf-8")
    example = text.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "rpc.py").write_text("def add_services(server): pass\n")
    (tmp_path / "myapp" / "site.py").write_text(
        "from twisted.web.static import Data\nresource = Data(b'hello', 'text/plain')\n"
    )
    config = load(write(tmp_path, example))
    assert config.listener_routes == ("grpc", "web", "ssh")
    make_service(config, reactor=MemoryReactorClock())


def test_every_toml_block_in_the_docs_parses() -> None:
    import tomllib

    blocks = DOCS.read_text(encoding="utf-8").split("```toml\n")[1:]
    assert len(blocks) >= 4
    for block in blocks:
        tomllib.loads(block.split("```", 1)[0])


def test_grpc_server_table_is_checked(tmp_path: Path) -> None:
    text = 'listen = ["tcp:0"]\n[grpc_server]\nmax_worker = 4\n' + WEB_ROUTE
    message = error_of(tmp_path, text)
    assert_says(
        message,
        'key "grpc_server"',
        'unknown key "max_worker" in the grpc_server table',
        'did you mean "max_workers"?',
    )
    text = 'listen = ["tcp:0"]\n[grpc_server]\ngrace = "soon"\n' + WEB_ROUTE
    message = error_of(tmp_path, text)
    assert_says(message, 'key "grpc_server.grace"', 'found the string "soon"')


def test_a_route_used_nowhere_is_logged(tmp_path: Path) -> None:
    from tests.logs import captured_logs

    text = 'listen = ["tcp:0"]\nroutes = ["web"]\n' + WEB_ROUTE + SSH_ROUTE
    with captured_logs() as lines:
        config = load(write(tmp_path, text))
    assert config.listener_routes == ("web",)
    assert any("route 'ssh' is used by no listener" in line for line in lines), lines


def test_tls_files_that_do_not_fit_name_the_route(tmp_path: Path) -> None:
    files = pki()
    text = f"""
    listen = ["tcp:0"]
    [[route]]
    name = "https"
    match = ["tls"]
    [route.tls]
    certificate = "{files.server_certificate}"
    key = "{files.ca}"
    routes = ["web"]
    {WEB_ROUTE}
    """
    config = load(write(tmp_path, text))
    with pytest.raises(ConfigurationError) as raised:
        make_service(config, reactor=MemoryReactorClock())
    assert_says(str(raised.value), 'cmux.toml: route "https": key "tls": ', "ca.pem")


def test_a_target_missing_from_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load(write(tmp_path, 'listen = ["tcp:0"]\n' + SSH_ROUTE))
    monkeypatch.setitem(sys.modules, "txcmux.relay", None)
    with pytest.raises(ConfigurationError) as raised:
        make_service(config, reactor=MemoryReactorClock())
    assert_says(
        str(raised.value),
        'route "ssh": key "proxy"',
        "target 'proxy' is not available in this build",
    )


def _documented_parameters(function: object) -> str:
    """A matcher's declared parameters as the docs' table writes them."""
    written = []
    for param in parameters_of(function) or ():  # type: ignore[arg-type]
        if param.repeats and param.singular:
            written.append(f"{param.name} ({param.singular})")
        elif param.default in (REQUIRED, None):
            written.append(param.name)
        else:
            default = param.default
            shown = str(default).lower() if isinstance(default, bool) else default
            written.append(f"{param.name} = {shown}")
    return ", ".join(written) or "—"


def test_the_builtin_matcher_table_matches_the_declarations() -> None:
    text = DOCS.read_text(encoding="utf-8")
    table = text.split("The built-in matchers")[1].split("\n\n")[1]
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in table.splitlines()[2:]
    ]
    documented = {row[0]: row[1] for row in rows}
    assert list(documented) == list(BUILTIN_MATCHERS)
    for name, function in BUILTIN_MATCHERS.items():
        assert parameters_of(function) is not None, f"{name} declares nothing"
        assert documented[name] == _documented_parameters(function), name


# -- endpoint strings, in the user's terms -----------------------------------


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        (
            "tcp:8080:bogus=1",
            'unknown argument "bogus" for tcp, which takes port, interface, backlog',
        ),
        (
            "haproxy:tcp:8080:bogus=1",
            'unknown argument "bogus" for tcp, which takes port, interface, backlog',
        ),
        (
            "tcp6:0:interface=::1",
            'the value of "interface" seems cut at a colon; write a colon inside'
            ' a value as "\\:", as in interface=\\:\\:1',
        ),
        ("unix:a:b:c:d:e", "too many arguments for unix, which takes address, mode"),
        ("tcp:8080:port=9", 'argument "port" is given twice'),
        ("systemd:domain=INET:index=0:bogus=1", 'unknown argument "bogus" for systemd'),
    ],
)
def test_server_endpoint_arguments_are_explained(
    tmp_path: Path, listen: str, expected: str
) -> None:
    message = error_of(
        tmp_path, f'listen = ["{listen}"]\n'.replace("\\", "\\\\") + WEB_ROUTE
    )
    assert_says(
        message,
        'key "listen[0]"',
        "is not a valid Twisted server endpoint string: " + expected,
        'expected something like "tcp:8080"',
    )
    assert "_parse" not in message and "positional" not in message


@pytest.mark.parametrize(
    ("proxy", "expected"),
    [
        # Twisted takes this one, with an empty host: it would fail later.
        ("tcp:host=::1:port=22", "as in host=\\:\\:1"),
        ("tls:host=::1:port=1", "as in host=\\:\\:1"),
        ("tcp:host=h:port=1:bogus=2", 'unknown argument "bogus" for tcp, which takes'),
        ("unix:path=/x:bogus=1", 'unknown argument "bogus" for unix, which takes'),
    ],
)
def test_client_endpoint_arguments_are_explained(
    tmp_path: Path, proxy: str, expected: str
) -> None:
    route = SSH_ROUTE.replace("tcp:host=127.0.0.1:port=22", proxy)
    message = error_of(tmp_path, 'listen = ["tcp:0"]\n' + route)
    assert_says(
        message,
        'key "proxy"',
        "is not a valid Twisted client endpoint string",
        expected,
        'expected something like "tcp:host=127.0.0.1:port=22"',
    )


def test_escaped_colons_are_accepted(tmp_path: Path) -> None:
    text = """
    listen = ['tcp6:0:interface=\\:\\:1']
    [[route]]
    name = "ssh"
    match = ["ssh"]
    proxy = 'tcp:host=\\:\\:1:port=22'
    """
    config = load(write(tmp_path, text))
    assert config.listen == ("tcp6:0:interface=\\:\\:1",)


@pytest.mark.parametrize("server", [True, False])
def test_the_argument_tables_name_what_twisted_takes(server: bool) -> None:
    from twisted.internet import endpoints

    from txcmux._config._endpoints import (
        CLIENT_ARGUMENTS,
        SERVER_ARGUMENTS,
        _InertReactor,
    )

    parse = endpoints.serverFromString if server else endpoints.clientFromString
    for kind, names in (SERVER_ARGUMENTS if server else CLIENT_ARGUMENTS).items():
        for name in [*names.split(), "bogus"]:
            try:
                parse(_InertReactor(), f"{kind}:h:1:{name}=x")
            except Exception as error:
                unknown = "unexpected keyword" in str(error) or (
                    "unrecognized keyword" in str(error)
                )
            else:
                unknown = False
            assert unknown == (name == "bogus"), (kind, name)


def test_a_systemd_socket_is_looked_up_when_built(tmp_path: Path) -> None:
    # Checking accepts it (the socket is inherited at start); building says
    # plainly that none was passed.
    path = write(tmp_path, 'listen = ["systemd:domain=INET:index=0"]\n' + WEB_ROUTE)
    config = load(path)
    with pytest.raises(ConfigurationError) as raised:
        make_service(config, reactor=MemoryReactorClock())
    assert_says(
        str(raised.value),
        f'{path}: key "listen[0]": "systemd:domain=INET:index=0": no socket was'
        " passed for index 0: this process was passed 0 sockets",
        "LISTEN_FDS",
        "--fdname",
    )
    with pytest.raises(ConfigurationError) as raised:
        make_service(
            load(path, listen=["systemd:domain=UNIX:name=web"]),
            reactor=MemoryReactorClock(),
        )
    assert_says(
        str(raised.value),
        'the command line: key "--listen[0]"',
        'no socket was passed for the name "web"',
    )


# -- TOML syntax errors point at the mistake ---------------------------------


def test_an_unclosed_array_is_shown_on_its_own_line(tmp_path: Path) -> None:
    lines = [f"# line {n}" for n in range(1, 21)]
    lines += ['listen = ["tcp:0"]', 'routes = ["web"', "", "[[route]]"]
    message = error_of(tmp_path, "\n".join(lines) + "\n" + WEB_ROUTE)
    assert_says(
        message,
        "not valid TOML: Unclosed array, probably at the end of line 22:"
        " 'routes = [\"web\"' (noticed at line 24, column 1: '[[route]]')",
    )


def test_an_unclosed_array_at_the_end_of_the_file(tmp_path: Path) -> None:
    message = error_of(tmp_path, 'sniff_timeout = 1\nlisten = ["tcp:0"')
    assert_says(
        message,
        "Unclosed array, probably at the end of line 2: 'listen = [\"tcp:0\"'",
        "noticed at the end of the file",
    )


def test_other_toml_errors_show_the_line(tmp_path: Path) -> None:
    message = error_of(tmp_path, 'listen = ["tcp:0"]\nsniff_timeout = yes\n')
    assert_says(
        message,
        "not valid TOML: Invalid value (at line 2, column 17): 'sniff_timeout = yes'",
    )


# -- what checking leaves behind ---------------------------------------------


def test_checking_leaves_sys_path_as_it_was(tmp_path: Path) -> None:
    (tmp_path / "cmux_next_to_it.py").write_text("resource = None\n")
    route = WEB_ROUTE.replace("txcmux.demo:resource", "cmux_next_to_it:resource")
    before = list(sys.path)
    load(write(tmp_path, 'listen = ["tcp:0"]\n' + route))
    assert sys.path == before
    # And when checking fails after the import, too.
    error_of(tmp_path, 'listen = ["tcp:0"]\n' + route + 'sniff_timeout = "x"\n')
    assert sys.path == before


def test_warnings_are_kept_for_check_to_print(tmp_path: Path) -> None:
    text = 'listen = ["tcp:0"]\nroutes = ["web"]\n' + WEB_ROUTE + SSH_ROUTE
    config = load(write(tmp_path, text))
    assert config.warnings == (
        f"{tmp_path / 'cmux.toml'}: route 'ssh' is used by no listener and no"
        " tls route",
    )


# -- the PROXY protocol --------------------------------------------------------


def test_proxy_protocol_is_off_unless_asked(tmp_path: Path) -> None:
    config = load(write(tmp_path, 'listen = ["tcp:0"]\n' + WEB_ROUTE))
    (listener,) = config.listeners
    assert listener.proxy_protocol == "off"
    assert listener.prelude() is None
    assert make_service(config).mux.prelude is None


def test_top_level_proxy_keys_apply_to_every_listener_a_table_may_differ(
    tmp_path: Path,
) -> None:
    config = load(
        write(
            tmp_path,
            """\
            proxy_protocol = "optional"
            trusted_proxies = ["10.0.0.0/8", "unix"]
            proxy_protocol_max_bytes = 512
            listen = [
                "tcp:0",
                "tcp:1",
                { endpoint = "tcp:2", proxy_protocol = "off" },
                { endpoint = "tcp:3", trusted_proxies = ["::1"] },
            ]
            """
            + WEB_ROUTE,
        )
    )
    assert config.listen == ("tcp:0", "tcp:1", "tcp:2", "tcp:3")
    modes = [(lis.proxy_protocol, lis.trusted_proxies) for lis in config.listeners]
    assert modes == [
        ("optional", ("10.0.0.0/8", "unix")),
        ("optional", ("10.0.0.0/8", "unix")),
        ("off", ("10.0.0.0/8", "unix")),
        ("optional", ("::1",)),
    ]
    first = config.listeners[0].prelude()
    assert first is not None
    assert (first.mode, first.max_v2_bytes, first.trust_unix) == ("optional", 512, True)
    service = make_service(config)
    # Each listener has its own detector (its own limits and counts), all
    # of them on the same routes.
    muxes = service.muxes
    assert len({id(mux) for mux in muxes}) == 4
    assert muxes[2].prelude is None
    assert [m.prelude.mode for m in muxes if m.prelude] == [
        "optional",
        "optional",
        "optional",
    ]
    assert muxes[0].routes == muxes[3].routes


def test_listen_option_takes_the_top_level_proxy_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'proxy_protocol = "required"\nlisten = [{ endpoint = "tcp:9" }]\n' + WEB_ROUTE,
    )
    (listener,) = load(path, listen=["tcp:0"]).listeners
    assert (listener.endpoint, listener.proxy_protocol) == ("tcp:0", "required")


@pytest.mark.parametrize(
    ("top", "expected"),
    [
        (
            'proxy_protocol = "maybe"\nlisten = ["tcp:0"]',
            (
                'key "proxy_protocol"',
                'found the string "maybe"',
                'one of "off", "optional" or "required"',
            ),
        ),
        (
            'proxy_protocol = "optional"\nlisten = ["tcp:0"]',
            ('key "proxy_protocol"', "needs trusted_proxies"),
        ),
        (
            'listen = [{ endpoint = "tcp:0", proxy_protocol = "optional" }]',
            ('key "listen[0].proxy_protocol"', "needs trusted_proxies"),
        ),
        (
            'trusted_proxies = ["10.0.0.0/8", "10.0.0.0/33"]\nlisten = ["tcp:0"]',
            ('key "trusted_proxies[1]"', '"10.0.0.0/33"', "CIDR block"),
        ),
        (
            'proxy_protocol_max_bytes = 15\nlisten = ["tcp:0"]',
            ('key "proxy_protocol_max_bytes"', "at least 16"),
        ),
        (
            'listen = ["tcp:0", { endpoint = "tcp:1", proxy_protocl = "off" }]',
            ('key "listen[1]"', 'unknown key "proxy_protocl"', 'mean "proxy_protocol"'),
        ),
        (
            'listen = [{ proxy_protocol = "off" }]',
            ('key "listen[0]"', 'missing key "endpoint"'),
        ),
        (
            'listen = [{ endpoint = "tpc:0" }]',
            ('key "listen[0].endpoint"', "tpc"),
        ),
        (
            "listen = [8080]",
            ('key "listen[0]"', "found the integer 8080", "a server endpoint string"),
        ),
        (
            'proxy_protocol = "required"\nlisten = ["haproxy:tcp:0"]',
            ('key "proxy_protocol"', "haproxy:", "not both"),
        ),
    ],
)
def test_proxy_key_errors(tmp_path: Path, top: str, expected: tuple[str, ...]) -> None:
    assert_says(error_of(tmp_path, top + "\n" + WEB_ROUTE), *expected)


def test_send_proxy_reaches_the_relay(tmp_path: Path) -> None:
    route = SSH_ROUTE + 'send_proxy = "v2"\nsend_proxy_checksum = true\n'
    config = load(write(tmp_path, 'listen = ["tcp:0"]\n' + route))
    target = config.route("ssh").target
    assert isinstance(target, ProxyTarget)
    assert (target.send_proxy, target.send_proxy_checksum) == ("v2", True)
    assert config.route("ssh").describe().endswith("with PROXY v2")
    relay = make_service(config).mux.routes[0].factory
    assert (relay.send_proxy, relay.proxy_checksum) == ("v2", True)  # type: ignore[attr-defined]
    plain = load(write(tmp_path, 'listen = ["tcp:0"]\n' + SSH_ROUTE, "plain.toml"))
    assert make_service(plain).mux.routes[0].factory.send_proxy is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        (SSH_ROUTE + 'send_proxy = "v3"', ('key "send_proxy"', '"v1" or "v2"')),
        (
            SSH_ROUTE + "send_proxy_checksum = true",
            ('key "send_proxy_checksum"', 'send_proxy = "v2"'),
        ),
        (
            SSH_ROUTE + 'send_proxy = "v2"\nsend_proxy_checksum = "yes"',
            ('key "send_proxy_checksum"', "true or false"),
        ),
        (
            WEB_ROUTE + 'send_proxy = "v1"',
            ('route "web"', 'key "send_proxy"', "only a proxy route", "is web"),
        ),
    ],
)
def test_send_proxy_errors(
    tmp_path: Path, route: str, expected: tuple[str, ...]
) -> None:
    assert_says(error_of(tmp_path, 'listen = ["tcp:0"]\n' + route), *expected)


def test_idle_timeout_reaches_the_relay(tmp_path: Path) -> None:
    listen = 'listen = ["tcp:0"]\n'
    for text, expected in [
        ("", 3600.0),
        ("idle_timeout = 90\n", 90.0),
        ("idle_timeout = 0\n", 0.0),
    ]:
        config = load(write(tmp_path, listen + SSH_ROUTE + text))
        relay = make_service(config).mux.routes[0].factory
        assert relay.idle_timeout == expected  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        (
            SSH_ROUTE + "idle_timeout = -5",
            ('route "ssh"', 'key "idle_timeout"', "-5", "positive number of seconds"),
        ),
        (
            SSH_ROUTE + 'idle_timeout = "1h"',
            ('key "idle_timeout"', "1h", "seconds"),
        ),
        (
            WEB_ROUTE + "idle_timeout = 30",
            ('route "web"', 'key "idle_timeout"', "a key of proxy routes", "is web"),
        ),
    ],
)
def test_idle_timeout_errors(
    tmp_path: Path, route: str, expected: tuple[str, ...]
) -> None:
    assert_says(error_of(tmp_path, 'listen = ["tcp:0"]\n' + route), *expected)


def test_header_timeout_reaches_the_web_factory(tmp_path: Path) -> None:
    listen = 'listen = ["tcp:0"]\n'
    for text, expected in [
        ("", 60.0),
        ("header_timeout = 5\n", 5.0),
        ("header_timeout = 0\n", 0.0),
    ]:
        config = load(write(tmp_path, listen + WEB_ROUTE + "\n" + text))
        web = make_service(config).mux.routes[0].factory
        assert web.header_timeout == expected  # type: ignore[attr-defined]
        assert web.name == "web"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        (
            WEB_ROUTE + "\nheader_timeout = -1",
            ('route "web"', 'key "header_timeout"', "positive number of seconds"),
        ),
        (
            SSH_ROUTE + "header_timeout = 5",
            ('route "ssh"', 'key "header_timeout"', "a key of web, static", "is proxy"),
        ),
    ],
)
def test_header_timeout_errors(
    tmp_path: Path, route: str, expected: tuple[str, ...]
) -> None:
    assert_says(error_of(tmp_path, 'listen = ["tcp:0"]\n' + route), *expected)


# -- limits, drain and the admin table ----------------------------------------


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (
            'listen = ["tcp:0"]\nmax_connections = -1\n',
            ('key "max_connections"', "0 for no limit"),
        ),
        (
            'listen = [{ endpoint = "tcp:0", max_sniffing = "many" }]\n',
            ('key "listen[0].max_sniffing"', '"many"', "a number of connections"),
        ),
        (
            'listen = ["tcp:0"]\ndrain_timeout = 0\n',
            ('key "drain_timeout"', "a positive number of seconds"),
        ),
        (
            'listen = ["tcp:0"]\n[admin]\nlisten = "nonsense:1"\n',
            ('key "admin.listen"',),
        ),
        (
            'listen = ["tcp:0"]\n[admin]\nlisen = "tcp:1"\n',
            ('unknown key "lisen"', 'did you mean "listen"'),
        ),
    ],
)
def test_limit_drain_and_admin_mistakes(
    tmp_path: Path, text: str, fragments: tuple[str, ...]
) -> None:
    assert_says(error_of(tmp_path, text + WEB_ROUTE), *fragments)


def test_route_max_connections_must_be_a_count(tmp_path: Path) -> None:
    message = error_of(
        tmp_path, 'listen = ["tcp:0"]\n' + WEB_ROUTE + "max_connections = 1.5\n"
    )
    assert_says(message, 'route "web"', 'key "max_connections"', "1.5")


def test_limits_defaults_and_overrides(tmp_path: Path) -> None:
    from txcmux import Limits

    config = load(
        write(
            tmp_path,
            'max_connections_per_ip = 8\nlisten = ["tcp:0",'
            ' { endpoint = "tcp:1", max_connections = 0, max_sniffing = 5 }]\n'
            + WEB_ROUTE
            + "max_connections = 3\n",
        )
    )
    assert [listener.limits for listener in config.listeners] == [
        Limits(max_connections=10000, max_sniffing=1000, max_connections_per_ip=8),
        Limits(max_connections=None, max_sniffing=5, max_connections_per_ip=8),
    ]
    assert config.routes[0].max_connections == 3
    assert (config.drain_timeout, config.admin) == (30.0, None)
    service = make_service(config, reactor=MemoryReactorClock())
    assert service.muxes[1].connections.limits.max_sniffing == 5
    assert service.mux.routes[0].max_connections == 3


def test_reload_keeps_each_listeners_counters_and_refuses_a_broken_file(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, 'listen = ["tcp:1"]\n' + WEB_ROUTE)
    service = make_service(load(path), reactor=MemoryReactorClock())
    service.startService()
    first = service.mux
    first.stats["accepted"] += 3
    path.write_text('listen = ["tcp:2", "tcp:1"]\n' + WEB_ROUTE + SSH_ROUTE)
    assert service.reload()
    assert service.generation.number == 2
    assert [listener.description for listener in service.listeners] == [
        "tcp:2",
        "tcp:1",
    ]
    assert service.muxes[1] is not first
    assert service.muxes[1].stats is first.stats  # tcp:1 counts on
    assert service.muxes[0].stats["accepted"] == 0
    assert [route.name for route in service.mux.routes] == ["web", "ssh"]
    assert service.retired == []  # nothing was open on the old generation
    path.write_text('listen = ["tcp:1"]\nsniff_timout = 2\n' + WEB_ROUTE)
    assert not service.reload()
    assert service.reload_error is not None
    assert 'unknown key "sniff_timout"' in service.reload_error
    assert service.generation.number == 2
