"""Matchers made of matchers: all of them, any of them, not this one.

A route's ``match`` list already means *any of*; these say the rest, such
as "TLS for admin.example.com, from 10.0.0.0/8"::

    >>> from twisted.internet.address import IPv4Address
    >>> from txcmux import matchers
    >>> admin = matchers.all_of(
    ...     matchers.tls(sni="admin.example.com"), matchers.remote_ip("10.0.0.0/8")
    ... )
    >>> admin.max_bytes
    65536
    >>> outside = IPv4Address("TCP", "198.51.100.7", 50000)
    >>> admin.bind(outside, None).name
    'never'
    >>> matchers.not_(matchers.ssh())(b"SSH-").outcome.value
    'need more'

Answers, with each part's ``NEED_MORE`` at or past its own ``max_bytes``
counted as ``NO_MATCH`` (as a route counts it):

- ``all_of``: ``NO_MATCH`` as soon as one part says so, ``MATCH`` once all
  do, else ``NEED_MORE``.
- ``any_of``: ``MATCH`` as soon as one part says so, ``NO_MATCH`` once all
  do, else ``NEED_MORE``.
- ``not_``: ``MATCH`` and ``NO_MATCH`` swapped; ``NEED_MORE`` stays
  ``NEED_MORE`` (what is not known yet is not known negated either).

Each keeps what its parts declare: ``max_bytes`` is the largest part's;
``alpn`` is what every part that declares one agrees on (``all_of``), or
what any part declares (``any_of``), or nothing (``not_``); the bytes a
waiting part wants sent (and its answer filter) are passed on while the
whole is waiting; and a combination with a part that depends on the
connection depends on it too: binding binds the parts and drops the
constants they become.  A part that raises makes the whole raise, so the
route takes it as no match (``not_`` never turns a failure into a match).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet.interfaces import IAddress

from ._address import ALWAYS, NEVER, Constant, bind_matcher, depends_on_connection
from ._params import Param, parameters
from ._verdict import MATCH, NEED_MORE, NO_MATCH, Matcher, Outcome, Verdict, combine

# Enum members read once: a class attribute lookup on an Enum is slow.
_MATCH = Outcome.MATCH
_NEED_MORE = Outcome.NEED_MORE


def _names(parts: Sequence[Matcher]) -> str:
    return ", ".join(part.name for part in parts)


class _Combination:
    """What the three combinators share: parts, bound, name, binding."""

    __slots__ = ("alpn", "max_bytes", "name", "parts")

    def __init__(self, name: str, parts: tuple[Matcher, ...], alpn: tuple[bytes, ...]):
        self.parts = parts
        self.name = name
        self.max_bytes = max(part.max_bytes for part in parts)
        self.alpn = alpn

    def __repr__(self) -> str:
        return f"<Matcher {self.name}>"


class _AllOf(_Combination):
    __slots__ = ()

    def __call__(self, data: bytes) -> Verdict:
        size = len(data)
        waiting: list[Verdict] = []
        pending = False
        for part in self.parts:
            answer = part(data)
            outcome = answer.outcome
            if outcome is _MATCH:
                continue
            if outcome is not _NEED_MORE or size >= part.max_bytes:
                return NO_MATCH
            pending = True
            if answer.send:
                waiting.append(answer)
        return combine(waiting) if waiting else NEED_MORE if pending else MATCH


class _AnyOf(_Combination):
    __slots__ = ()

    def __call__(self, data: bytes) -> Verdict:
        size = len(data)
        waiting: list[Verdict] = []
        pending = False
        for part in self.parts:
            answer = part(data)
            outcome = answer.outcome
            if outcome is _MATCH:
                return MATCH
            if outcome is _NEED_MORE and size < part.max_bytes:
                pending = True
                if answer.send:
                    waiting.append(answer)
        return combine(waiting) if waiting else NEED_MORE if pending else NO_MATCH


class _Not(_Combination):
    __slots__ = ()

    def __call__(self, data: bytes) -> Verdict:
        part = self.parts[0]
        answer = part(data)
        outcome = answer.outcome
        if outcome is _MATCH:
            return NO_MATCH
        if outcome is _NEED_MORE and len(data) < part.max_bytes:
            return answer  # with what it sends, if anything
        return MATCH


class _Binding:
    """Mixed into a combination with a part that depends on the connection."""

    __slots__ = ()
    parts: tuple[Matcher, ...]

    def __call__(self, data: bytes) -> Verdict:
        return NO_MATCH  # unbound: no connection known

    def bind(self, client: IAddress | None, local: IAddress | None) -> Matcher:
        """The combination of the parts bound to this connection, simplified."""
        return self._rebuild(
            tuple([bind_matcher(p, client, local) for p in self.parts])
        )

    def _rebuild(self, parts: tuple[Matcher, ...]) -> Matcher:
        raise NotImplementedError


class _BindingAllOf(_Binding, _AllOf):
    __slots__ = ()

    def _rebuild(self, parts: tuple[Matcher, ...]) -> Matcher:
        return _all_of(parts)


class _BindingAnyOf(_Binding, _AnyOf):
    __slots__ = ()

    def _rebuild(self, parts: tuple[Matcher, ...]) -> Matcher:
        return _any_of(parts)


class _BindingNot(_Binding, _Not):
    __slots__ = ()

    def _rebuild(self, parts: tuple[Matcher, ...]) -> Matcher:
        return _not(parts[0])


def _constant_outcome(part: Matcher) -> Outcome | None:
    return part.outcome if isinstance(part, Constant) else None


def _all_of(parts: tuple[Matcher, ...]) -> Matcher:
    """``all_of`` over ``parts``, with constants folded away."""
    if any(_constant_outcome(p) is Outcome.NO_MATCH for p in parts):
        return NEVER
    kept = tuple(p for p in parts if _constant_outcome(p) is not _MATCH)
    if not kept:
        return ALWAYS
    if len(kept) == 1:
        return kept[0]
    declared = [tuple(getattr(p, "alpn", ())) for p in kept]
    declared = [d for d in declared if d]
    alpn = (
        tuple(a for a in declared[0] if all(a in d for d in declared))
        if declared
        else ()
    )
    kind = _BindingAllOf if any(map(depends_on_connection, kept)) else _AllOf
    return kind(f"all_of({_names(kept)})", kept, alpn)


def _any_of(parts: tuple[Matcher, ...]) -> Matcher:
    """``any_of`` over ``parts``, with constants folded away."""
    if any(_constant_outcome(p) is _MATCH for p in parts):
        return ALWAYS
    kept = tuple(p for p in parts if _constant_outcome(p) is not Outcome.NO_MATCH)
    if not kept:
        return NEVER
    if len(kept) == 1:
        return kept[0]
    alpn: list[bytes] = []
    for part in kept:
        alpn += [a for a in getattr(part, "alpn", ()) if a not in alpn]
    kind = _BindingAnyOf if any(map(depends_on_connection, kept)) else _AnyOf
    return kind(f"any_of({_names(kept)})", kept, tuple(alpn))


def _not(part: Matcher) -> Matcher:
    """``not_`` of ``part``, with a constant negated at once."""
    outcome = _constant_outcome(part)
    if outcome is not None:
        return NEVER if outcome is _MATCH else ALWAYS
    kind = _BindingNot if depends_on_connection(part) else _Not
    return kind(f"not({part.name})", (part,), ())


def _checked(caller: str, parts: tuple[object, ...]) -> tuple[Matcher, ...]:
    if not parts:
        raise ValueError(f"{caller}() needs at least one matcher")
    for part in parts:
        if not (
            callable(part)
            and isinstance(getattr(part, "max_bytes", None), int)
            and isinstance(getattr(part, "name", None), str)
        ):
            raise ValueError(
                f"{caller}(): {part!r} is not a matcher (a callable with name and"
                " max_bytes, such as matchers.tls())"
            )
    return parts  # type: ignore[return-value]


def takes_matchers(
    *names: str,
) -> Callable[[Callable[..., Matcher]], Callable[..., Matcher]]:
    """Mark the parameters of a matcher function that take matchers.

    A config file writes each as a matcher entry (a name, or a table with
    ``type``), or an array of them; the config layer builds those first.
    """

    def mark(function: Callable[..., Matcher]) -> Callable[..., Matcher]:
        function.txcmux_matcher_parameters = names  # type: ignore[attr-defined]
        return function

    return mark


@takes_matchers("of")
@parameters(Param("of", list[object], repeats=True))
def all_of(*of: Matcher) -> Matcher:
    """Match a connection that every one of the matchers ``of`` matches.

    In a config file: ``{ type = "all_of", of = [ ..., ... ] }``, each item
    a matcher name or table.
    """
    return _all_of(_checked("all_of", of))


@takes_matchers("of")
@parameters(Param("of", list[object], repeats=True))
def any_of(*of: Matcher) -> Matcher:
    """Match a connection that one of the matchers ``of`` matches.

    What a route's ``match`` list means already; for use inside
    :func:`all_of` and :func:`not_`.
    """
    return _any_of(_checked("any_of", of))


@takes_matchers("of")
@parameters(Param("of", object))
def not_(of: Matcher) -> Matcher:
    """Match a connection that the matcher ``of`` does not match.

    ``NEED_MORE`` stays ``NEED_MORE``: it is known only once ``of`` decides
    (or reaches its ``max_bytes``, counted as no match, so ``not_``
    matches).  In a config file: ``{ type = "not", of = "ssh" }`` or
    ``{ type = "not", of = { type = "remote_ip", cidrs = [...] } }``.
    """
    return _not(_checked("not", (of,))[0])
