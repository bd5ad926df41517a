"""Fuzzing the config loader with generated TOML documents.

Documents are shaped like the schema (txcmux/_config/_schema.py): its keys,
route tables with every matcher name and random parameters, listen tables,
values of every TOML type, right and wrong; plus random keys, damaged
documents and bytes that are not UTF-8.  Loading one either gives a
:class:`~txcmux.config.Config` or raises a
:class:`~txcmux.ConfigurationError` whose text names the file; any other
exception fails.

Nothing here imports a module by a random name: import paths are drawn from
a fixed list of harmless ones and names no installed module has.
"""

from __future__ import annotations

import datetime
import math
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from txcmux import ConfigurationError
from txcmux._config._schema import (
    GRPC_SERVER_KEYS,
    LISTENER_KEYS,
    ROUTE_KEYS,
    TLS_KEYS,
    TOP_LEVEL_KEYS,
    load,
)
from txcmux._plugins import matcher_registry
from txcmux.matchers._params import parameters_of

from .fuzzing import fuzz_settings, mutated

REGISTRY = matcher_registry()

# -- writing TOML ---------------------------------------------------------------


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def toml_value(value: object) -> str:
    """``value`` as TOML (tables inline)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, dict), value
    inner = ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items())
    return "{ " + inner + " }"


def toml_document(table: dict[str, object]) -> str:
    """A whole document: one ``key = value`` line per top-level key."""
    return "".join(f"{toml_string(k)} = {toml_value(v)}\n" for k, v in table.items())


# -- values shaped like the schema's ----------------------------------------------

_SAFE_TEXT = st.text(alphabet="qz_.:/-0", max_size=12)
ints = st.one_of(
    st.integers(-3, 70000), st.sampled_from([0, 1, 16, 2**31, 2**63 - 1, -(2**63)])
)
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -1.0, 0.001, 5.0]),
)
scalars = st.one_of(
    st.booleans(),
    ints,
    floats,
    st.text(max_size=20),
    st.dates(),
    st.times(),
)
any_value = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=8), inner, max_size=4),
    ),
    max_leaves=10,
)

endpoints = st.one_of(
    st.sampled_from(
        [
            "tcp:8080",
            "tcp:0:interface=127.0.0.1",
            "tcp:port=0:interface=::1",
            "unix:/nonexistent/dir/x.sock",
            "ssl:443",
            "haproxy:tcp:80",
            "systemd:domain=INET:index=0",
            "tcp:host=127.0.0.1:port=22",
            "tcp:host=localhost:port=99999",
            "bogus:1",
            "tcp:",
            "tcp:8080:backlog=x",
            "unix:",
            "",
            ":",
            "tcp:80:interface=\x00",
        ]
    ),
    st.text(max_size=30),
)
_GOOD_ENDPOINTS = ["tcp:8080", "tcp:0:interface=127.0.0.1", "unix:/tmp/q.sock"]
import_paths = st.one_of(
    st.sampled_from(
        [
            "txcmux.demo:site",
            "txcmux.demo:nothing_here",
            "txcmux:matchers",
            "qqq_no_such_module:site",
            "qqq_no_such_module",
            ":site",
            "txcmux.:x",
        ]
    ),
    _SAFE_TEXT,
)
files = st.sampled_from(["garbage.pem", "empty.pem", "missing.pem", ".", "", "sub"])
matcher_names = st.sampled_from(sorted(REGISTRY.names()))


def _param_value(kind: object) -> st.SearchStrategy[object]:
    return st.one_of(any_value, st.text(max_size=40), ints)


@st.composite
def matcher_entries(draw: st.DrawFn, depth: int = 0) -> object:
    """A ``match`` list entry: a name, or a table of a name and parameters."""
    name = draw(st.one_of(matcher_names, matcher_names, st.text(max_size=10)))
    if draw(st.booleans()):
        return name
    entry: dict[str, object] = {"type": name}
    declared = ()
    if name in REGISTRY.names():
        declared = parameters_of(REGISTRY.get(name).load()) or ()
    for param in declared:
        if not draw(st.integers(0, 2)):
            continue
        key = draw(st.sampled_from(param.keys))
        if param.name == "of" and depth < 2:
            entry[key] = draw(
                st.one_of(
                    matcher_entries(depth + 1),
                    st.lists(matcher_entries(depth + 1), max_size=3),
                )
            )
        else:
            entry[key] = draw(
                st.one_of(
                    _param_value(param.type),
                    st.lists(st.text(max_size=20), max_size=3),
                    st.sampled_from(["10.0.0.0/8", "::1", "h2", "1.3", "[a-z]+"]),
                )
            )
    if draw(st.integers(0, 5)) == 0:
        entry[draw(st.text(max_size=6))] = draw(scalars)
    return entry


_ROUTE_VALUES: dict[str, st.SearchStrategy[object]] = {
    "name": st.one_of(
        *[st.sampled_from(["web", "ssh", "grpc", "tls"])] * 4, st.text(max_size=6)
    ),
    "match": st.one_of(st.lists(matcher_entries(), max_size=3), matcher_entries()),
    "web": import_paths,
    "static": files,
    "proxy": st.one_of(st.just("tcp:host=127.0.0.1:port=22"), endpoints),
    "send_proxy": st.sampled_from(["v1", "v2", "v3", ""]),
    "send_proxy_checksum": st.booleans(),
    "idle_timeout": st.one_of(floats, ints, st.text(max_size=4)),
    "header_timeout": st.one_of(floats, ints),
    "max_connections": ints,
    "grpc": st.one_of(
        import_paths,
        st.dictionaries(st.sampled_from(["servicer", "add", "x"]), import_paths),
        st.lists(import_paths, max_size=2),
    ),
    "factory": import_paths,
    # An app, or a function called to make one (txcmux.demo.config returns a
    # Config, which is no app: a clear error).
    "wsgi": st.one_of(import_paths, st.just("txcmux.demo:config()")),
    "wsgi_threads": ints,
    "asgi": st.one_of(import_paths, st.just("txcmux.demo:config()")),
    "asgi_lifespan": st.sampled_from(["auto", "on", "off", "sometimes", ""]),
    "grpc_backend": st.one_of(
        st.sampled_from(["in-process", "unix:/nonexistent", "tcp:127.0.0.1:1"]),
        endpoints,
    ),
    "grpc_web": st.booleans(),
    "grpc_web_origins": st.one_of(
        st.lists(st.sampled_from(["*", "https://a.example", "ftp:x", ""]), max_size=3),
        st.text(max_size=8),
    ),
    "tls": st.fixed_dictionaries(
        {},
        optional={
            "certificate": files,
            "key": files,
            "routes": st.lists(st.sampled_from(["web", "ssh", "grpc", "tls"])),
            "alpn": st.lists(st.sampled_from(["h2", "http/1.1", ""])),
            "sni": st.dictionaries(
                st.text(max_size=8), st.fixed_dictionaries({"certificate": files})
            ),
            "client_ca": files,
            "client_certificates": st.sampled_from(["required", "optional", "no"]),
            "handshake_timeout": floats,
        },
    ),
}

_LISTENER_VALUES: dict[str, st.SearchStrategy[object]] = {
    "endpoint": endpoints,
    "proxy_protocol": st.sampled_from(["off", "optional", "required", "on"]),
    "trusted_proxies": st.one_of(
        st.lists(st.sampled_from(["10.0.0.0/8", "unix", "::1", "300.1.1.1", ""])),
        st.text(max_size=10),
    ),
    "proxy_protocol_max_bytes": ints,
    "max_connections": ints,
    "max_sniffing": ints,
    "max_connections_per_ip": ints,
}

_TOP_VALUES: dict[str, st.SearchStrategy[object]] = {
    **_LISTENER_VALUES,
    "listen": st.one_of(
        *[st.lists(st.sampled_from(_GOOD_ENDPOINTS), min_size=1, max_size=2)] * 4,
        st.lists(
            st.one_of(
                endpoints,
                st.fixed_dictionaries(
                    {}, optional={k: v for k, v in _LISTENER_VALUES.items()}
                ),
            ),
            max_size=3,
        ),
        endpoints,
    ),
    "sniff_timeout": floats,
    "max_sniff_bytes": ints,
    "on_timeout": st.sampled_from(["web", "ssh", "nope"]),
    "routes": st.lists(st.sampled_from(["web", "ssh", "grpc", "tls", "x"]), max_size=4),
    "route": st.lists(
        st.fixed_dictionaries(
            {"name": _ROUTE_VALUES["name"], "match": _ROUTE_VALUES["match"]},
            optional={
                k: v for k, v in _ROUTE_VALUES.items() if k not in ("name", "match")
            },
        ),
        max_size=4,
    ),
    "grpc_server": st.fixed_dictionaries(
        {},
        optional={
            "max_workers": ints,
            "max_concurrent_rpcs": ints,
            "grace": floats,
            "options": st.dictionaries(st.text(max_size=8), scalars, max_size=3),
            "services": _ROUTE_VALUES["grpc"],
        },
    ),
    "drain_timeout": floats,
    "admin": st.fixed_dictionaries({}, optional={"listen": endpoints}),
    "log_decisions": st.booleans(),
    "workers": ints,
}


def test_the_generators_cover_the_schema() -> None:
    """A key added to the schema must get a generator here."""
    assert set(_TOP_VALUES) == set(TOP_LEVEL_KEYS) | {"endpoint"}
    assert set(_ROUTE_VALUES) == set(ROUTE_KEYS)
    assert set(_LISTENER_VALUES) == set(LISTENER_KEYS)
    assert {
        "max_workers",
        "max_concurrent_rpcs",
        "grace",
        "options",
        "services",
    } == set(GRPC_SERVER_KEYS)
    assert set(TLS_KEYS) <= {
        "certificate",
        "key",
        "routes",
        "alpn",
        "sni",
        "client_ca",
        "client_certificates",
        "handshake_timeout",
    }


@st.composite
def schema_documents(draw: st.DrawFn) -> dict[str, object]:
    """A top-level table with schema keys (each now right, now wrong)."""
    table: dict[str, object] = {}
    for key, values in _TOP_VALUES.items():
        if key == "endpoint":
            continue  # a listen table's key only
        if key in ("listen", "route") or draw(st.integers(0, 3)) == 0:
            table[key] = draw(
                st.one_of(values, any_value) if draw(st.integers(0, 9)) == 0 else values
            )
    if draw(st.integers(0, 19)) == 0:
        table[draw(st.text(min_size=1, max_size=12))] = draw(any_value)
    if draw(st.integers(0, 9)) == 0:
        del table[draw(st.sampled_from(["listen", "route"]))]
    return table


@st.composite
def route_documents(draw: st.DrawFn) -> dict[str, object]:
    """A good listener and random routes: the route and matcher checks are
    reached, not stopped at the first bad top-level value."""
    return {
        "listen": ["tcp:8080"],
        "route": draw(_TOP_VALUES["route"].filter(bool)),
    }


# -- the property ---------------------------------------------------------------


def _check(content: bytes) -> None:
    """Load ``content`` from a file: a Config, or an error naming the file."""
    with tempfile.TemporaryDirectory() as directory:
        base = Path(directory)
        (base / "garbage.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nxx\n")
        (base / "empty.pem").write_bytes(b"")
        (base / "sub").mkdir()
        path = base / "fuzzed.toml"
        path.write_bytes(content)
        try:
            load(path, registry=REGISTRY)
        except ConfigurationError as error:
            assert str(path) in str(error), str(error)


@fuzz_settings(300)
@given(table=schema_documents())
def test_schema_shaped_documents_load_or_say_what_is_wrong(
    table: dict[str, object],
) -> None:
    _check(toml_document(table).encode("utf-8"))


@fuzz_settings(300)
@given(table=route_documents())
def test_route_tables_load_or_say_what_is_wrong(table: dict[str, object]) -> None:
    _check(toml_document(table).encode("utf-8"))


@fuzz_settings(150)
@given(table=schema_documents(), data=st.data())
def test_damaged_documents_load_or_say_what_is_wrong(
    table: dict[str, object], data: st.DataObject
) -> None:
    text = toml_document(table).encode("utf-8")
    _check(data.draw(mutated({"doc": text})))


@fuzz_settings(150)
@given(
    content=st.one_of(st.text(max_size=200).map(str.encode), st.binary(max_size=200))
)
def test_garbage_loads_or_says_what_is_wrong(content: bytes) -> None:
    _check(content)
