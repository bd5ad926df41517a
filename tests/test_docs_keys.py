"""docs/configuration.md documents every key the config loader accepts, and no other.

The keys come from the schema itself (the ``*_KEYS`` tables of
``txcmux._config._schema`` and the matcher registry), never from a copy: a
key added to the loader fails here until the page documents it.  The other
direction asks the real loader: each key the page documents is put into a
config with a value no check accepts, and the loader must complain about the
value, not call the key unknown.  Every matcher name the registry offers
from txcmux itself is in a matcher table of the page.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from txcmux import ConfigurationError
from txcmux._config import _schema
from txcmux._config._values import Key
from txcmux._plugins import BUILTIN_MATCHERS, matcher_registry

PAGE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

#: Where each table of keys lives in a file, as configuration.md names it:
#: the prefix of its keys there.  A new ``*_KEYS`` table fails
#: test_every_key_table_has_a_place until it is given one here.
PLACES: dict[str, tuple[str, ...]] = {
    "TOP_LEVEL_KEYS": ("",),
    "LISTENER_KEYS": ("listen.",),
    "ROUTE_KEYS": ("route.",),
    "TLS_KEYS": ("route.tls.",),
    "GRPC_SERVER_KEYS": ("grpc_server.",),
    "ADMIN_KEYS": ("admin.",),
    # Both are part of the top level and of every listener table.
    "PROXY_KEYS": ("", "listen."),
    "LIMIT_KEYS": ("", "listen."),
}


def key_tables() -> dict[str, dict[str, Key]]:
    """Every public ``*_KEYS`` table of the schema: name to its keys."""
    return {
        name: value
        for name, value in vars(_schema).items()
        if name.endswith("_KEYS")
        and not name.startswith("_")
        and isinstance(value, dict)
        and all(isinstance(key, Key) for key in value.values())
    }


def accepted_keys() -> set[str]:
    """Every key the loader accepts, qualified as the page names it."""
    keys = {"route.match.type"}  # a matcher table's name; its other keys below
    for name, table in key_tables().items():
        for prefix in PLACES[name]:
            keys |= {prefix + key for key in table}
    return keys


def documented_keys() -> set[str]:
    """The keys of the page's key tables: rows whose first cell is `code`."""
    keys = set()
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        found = re.match(r"\|\s*`([^`]+)`\s*\|", line)
        if found:
            keys.add(found.group(1))
    return keys


def test_every_key_table_has_a_place() -> None:
    tables = set(key_tables())
    assert tables == set(PLACES), (
        "a *_KEYS table of the schema has no place in PLACES (or one went away):"
        f" {sorted(tables ^ set(PLACES))}"
    )


def test_every_accepted_key_is_documented() -> None:
    missing = accepted_keys() - documented_keys()
    assert not missing, f"accepted but not in docs/configuration.md: {sorted(missing)}"


def test_no_key_is_documented_that_the_schema_lacks() -> None:
    extra = documented_keys() - accepted_keys()
    assert not extra, f"in docs/configuration.md but not accepted: {sorted(extra)}"


# -- the same, asked of the loader -------------------------------------------


class _Probe:
    """A value no check accepts (TOML cannot even write it)."""

    def __repr__(self) -> str:
        return "<probe>"


def config_setting(qualified: str, value: object) -> dict[str, Any]:
    """A config table (as tomllib would give) with ``qualified`` set to ``value``."""
    web = {"name": "web", "match": ["http1"], "static": "."}
    config: dict[str, Any] = {"listen": ["tcp:0"], "route": [web]}
    table, _, key = qualified.rpartition(".")
    if table == "":
        config[key] = value
    elif table == "listen":
        config["listen"] = [{"endpoint": "tcp:0", key: value}]
    elif table == "route":
        config["route"] = [{**web, key: value}]
    elif table == "route.tls":
        tls = {"certificate": "a.pem", "key": "a.key", "routes": ["web"], key: value}
        config["route"] = [{"name": "tls", "match": ["tls"], "tls": tls}, web]
    elif table == "route.match":
        config["route"] = [{**web, "match": [{key: value}]}]
    elif table in ("grpc_server", "admin"):
        config[table] = {key: value}
    else:
        raise AssertionError(f"no probe for the table of {qualified}")
    return config


def loader_says(qualified: str, value: object) -> str:
    """What the loader says of a config setting ``qualified`` to ``value``."""
    try:
        _schema.validate(config_setting(qualified, value), source="probe.toml")
    except ConfigurationError as error:
        return str(error)
    except Exception as error:  # a check that chokes on the probe still knew the key
        return f"{type(error).__name__}: {error}"
    return "accepted"


@pytest.mark.parametrize("qualified", sorted(documented_keys()))
def test_the_loader_knows_every_documented_key(qualified: str) -> None:
    said = loader_says(qualified, _Probe())
    name = qualified.rpartition(".")[2]
    assert f'unknown key "{name}"' not in said, said


@pytest.mark.parametrize(
    "table", ["", "listen", "route", "route.tls", "grpc_server", "admin"]
)
def test_the_probe_tells_an_unknown_key(table: str) -> None:
    qualified = f"{table}.not_a_key" if table else "not_a_key"
    said = loader_says(qualified, _Probe())
    assert 'unknown key "not_a_key"' in said, said


# -- matchers ----------------------------------------------------------------


def documented_matchers() -> set[str]:
    """The names in the page's matcher tables (built-in, and plugins)."""
    names = set()
    text = PAGE.read_text(encoding="utf-8")
    for table in text.split("| name | parameters | matches |")[1:]:
        for line in table.split("\n\n", 1)[0].splitlines()[2:]:
            names.add(line.strip("|").split("|")[0].strip())
    return names


def test_every_matcher_name_is_documented_and_no_more() -> None:
    # The built-in table's parameters are checked by tests/test_config.py.
    documented = documented_matchers()
    assert set(BUILTIN_MATCHERS) - documented == set(), "built-in, not documented"
    # txcmux's own entry points (redis, postgres) are documented too; any
    # other name must be one the registry offers.
    registry = matcher_registry()
    own = {n for n in registry.names() if registry.get(n).source.endswith("(txcmux)")}
    assert own, "txcmux's redis and postgres entry points are not installed"
    assert own - documented == set(), "txcmux's own plugin, not documented"
    assert documented - set(registry.names()) == set()
