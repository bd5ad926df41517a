"""Matchers for protocols whose client speaks first, beyond HTTP, TLS and SSH.

WebSocket, SOCKS 4 and 5, MQTT, XMPP, OpenVPN over TCP, RDP and AMQP: what
sslh and caddy-l4 recognise, each read from its specification (named beside
each matcher) and checked against real clients where one is packaged::

    >>> from txcmux import matchers
    >>> matchers.socks5()(b"\\x05\\x01\\x00").outcome.value
    'match'
    >>> matchers.amqp()(b"AMQP\\x00\\x00\\x09").outcome.value
    'need more'

Each decides after a handful of bytes (``max_bytes`` says how many at most)
and answers ``NO_MATCH`` as soon as a byte proves the opening is something
else.  For protocols whose *server* speaks first (MySQL, SMTP, FTP, NATS,
POP3, IMAP) no bytes come to match: see ``on_timeout`` in docs/matchers.md.
"""

from __future__ import annotations

from ._http1 import DEFAULT_MAX_HEADER_BYTES, find_field, request_line_end
from ._params import Param, parameters
from ._simple import prefix_verdict
from ._verdict import MATCH, NEED_MORE, NO_MATCH, FunctionMatcher, Verdict

# -- WebSocket -----------------------------------------------------------------

# RFC 6455 section 4.1: the opening handshake is an HTTP/1.1 (or later) GET
# whose header block has an Upgrade field containing the token "websocket"
# (compared case-insensitively).
_GET = (b"GET ",)
_WEBSOCKET = b"websocket"


def _upgrades_to_websocket(name: bytes, value: bytes) -> bool:
    """Whether a field is ``Upgrade`` listing the token ``websocket``, any case."""
    return name.lower() == b"upgrade" and any(
        part.strip(b" \t").lower() == _WEBSOCKET for part in value.split(b",")
    )


@parameters(
    Param("path", str, None),
    Param("max_bytes", int, DEFAULT_MAX_HEADER_BYTES),
)
def websocket(
    path: str | bytes | None = None, max_bytes: int = DEFAULT_MAX_HEADER_BYTES
) -> FunctionMatcher:
    """Match a WebSocket opening handshake: a GET with ``Upgrade: websocket``.

    With ``path``, the request target's path (before any ``?``) must equal
    it, so ``/mqtt`` and ``/chat`` may go to different routes.  Decides at
    the Upgrade field, or at the end of the header block (``NO_MATCH``);
    a header block longer than ``max_bytes`` is not waited for.

    >>> ws = websocket("/chat")
    >>> ws(b"GET /chat?room=1 HTTP/1.1\\r\\nUpgrade: websocket\\r\\n").outcome.value
    'match'
    >>> ws(b"GET /other HTTP/1.1\\r\\n").outcome.value
    'no match'
    """
    wanted = path.encode("latin-1") if isinstance(path, str) else path
    if wanted is not None and not wanted.startswith(b"/"):
        raise ValueError(f"websocket(): the path must start with '/', not {path!r}")

    def verdict(data: bytes) -> Verdict:
        data = data[:max_bytes]  # however many arrived in one read
        found = scan(data)
        if found is NEED_MORE and len(data) >= max_bytes:
            return NO_MATCH
        return found

    def scan(data: bytes) -> Verdict:
        if len(data) < 4:
            return prefix_verdict(_GET, data)
        if not data.startswith(b"GET "):
            return NO_MATCH
        position = request_line_end(data)
        if isinstance(position, Verdict):
            return position
        line = data[:position].rstrip(b"\r\n")
        target, version = line[4:].rsplit(b" ", 1)
        if version == b"HTTP/1.0":
            return NO_MATCH  # RFC 6455 4.1: at least HTTP/1.1
        if wanted is not None and target.split(b"?", 1)[0] != wanted:
            return NO_MATCH
        return find_field(data, position, _upgrades_to_websocket)

    label = "websocket" if wanted is None else f"websocket({wanted.decode('latin-1')})"
    return FunctionMatcher(label, max_bytes, verdict, alpn=(b"http/1.1",))


# -- SOCKS ---------------------------------------------------------------------

# SOCKS 4 (Ying-Da Lee, "SOCKS: A protocol for TCP proxy across firewalls"),
# and 4A: VN=4, CD=1 (CONNECT) or 2 (BIND), DSTPORT (2 bytes), DSTIP (4
# bytes), USERID (any bytes but NUL), NUL.  4A puts 0.0.0.x (x > 0) in
# DSTIP and a host name and NUL after the user id.
_SOCKS4_USERID = 255
_SOCKS4_MAX = 8 + _SOCKS4_USERID + 1


def _socks4_verdict(data: bytes) -> Verdict:
    if not data:
        return NEED_MORE
    if data[0] != 4:
        return NO_MATCH
    if len(data) < 2:
        return NEED_MORE
    if data[1] not in (1, 2):
        return NO_MATCH
    if len(data) < 4:
        return NEED_MORE
    if data[2:4] == b"\x00\x00":
        return NO_MATCH  # port 0 is never a destination
    if data.find(b"\x00", 8, _SOCKS4_MAX) >= 0:
        return MATCH  # the user id is complete
    return NEED_MORE if len(data) < _SOCKS4_MAX else NO_MATCH


@parameters()
def socks4() -> FunctionMatcher:
    """Match a SOCKS 4 or 4A request (CONNECT or BIND), up to its user id's NUL.

    >>> socks4()(b"\\x04\\x01\\x00\\x50\\x7f\\x00\\x00\\x01\\x00").outcome.value
    'match'
    """
    return FunctionMatcher("socks4", _SOCKS4_MAX, _socks4_verdict)


# RFC 1928 section 3: the client's greeting is VER=5, NMETHODS (1 to 255),
# then NMETHODS method octets; 0xFF is "no acceptable methods", which only a
# server sends.  The client then waits for the server's choice.
_SOCKS5_MAX = 2 + 255


def _socks5_verdict(data: bytes) -> Verdict:
    if not data:
        return NEED_MORE
    if data[0] != 5:
        return NO_MATCH
    if len(data) < 2:
        return NEED_MORE
    count = data[1]
    if count == 0:
        return NO_MATCH
    methods = data[2 : 2 + count]
    if b"\xff" in methods:
        return NO_MATCH
    return MATCH if len(methods) == count else NEED_MORE


@parameters()
def socks5() -> FunctionMatcher:
    """Match a SOCKS 5 client greeting: version 5 and its authentication methods.

    Decides when the whole greeting (at most 257 bytes) has arrived; the
    client sends nothing more before the server answers.

    >>> socks5()(b"\\x05\\x02\\x00").outcome.value
    'need more'
    """
    return FunctionMatcher("socks5", _SOCKS5_MAX, _socks5_verdict)


# -- MQTT ----------------------------------------------------------------------

# MQTT 3.1.1 (OASIS, section 3.1) and 5.0 (OASIS, section 3.1): a CONNECT
# packet is the fixed header byte 0x10, a Remaining Length (1 to 4 bytes, 7
# bits each, high bit set on all but the last), then the protocol name as a
# UTF-8 string ("\x00\x04MQTT"), the protocol level (4 for 3.1.1, 5 for 5.0)
# and the connect flags, whose bit 0 is reserved and must be 0.
_MQTT_LEVELS = {4: "3.1.1", 5: "5.0"}
_MQTT_NAME = b"\x00\x04MQTT"
_MQTT_MAX = 1 + 4 + len(_MQTT_NAME) + 2


def _mqtt_verdict(data: bytes) -> Verdict:
    if not data:
        return NEED_MORE
    if data[0] != 0x10:
        return NO_MATCH
    position = 1
    remaining = 0
    for shift in (0, 7, 14, 21):
        if position == len(data):
            return NEED_MORE
        byte = data[position]
        remaining |= (byte & 0x7F) << shift
        position += 1
        if not byte & 0x80:
            break
    else:
        return NO_MATCH  # a fifth length byte is malformed
    if remaining < len(_MQTT_NAME) + 6:  # level, flags, keep alive, client id
        return NO_MATCH
    head = data[position : position + len(_MQTT_NAME) + 2]
    name = head[: len(_MQTT_NAME)]
    if not _MQTT_NAME.startswith(name):
        return NO_MATCH
    if len(head) > len(_MQTT_NAME) and head[len(_MQTT_NAME)] not in _MQTT_LEVELS:
        return NO_MATCH
    if len(head) < len(_MQTT_NAME) + 2:
        return NEED_MORE
    return NO_MATCH if head[-1] & 0x01 else MATCH


@parameters()
def mqtt() -> FunctionMatcher:
    """Match an MQTT CONNECT packet of protocol level 4 (3.1.1) or 5 (5.0).

    Decides at the connect flags, at most 13 bytes in.  MQTT over WebSocket
    is a WebSocket opening: route it with :func:`websocket`.

    >>> mqtt()(b"\\x10\\x10\\x00\\x04MQTT\\x04\\x02").outcome.value
    'match'
    """
    return FunctionMatcher("mqtt", _MQTT_MAX, _mqtt_verdict)


# -- XMPP ----------------------------------------------------------------------

# RFC 6120 section 4.2 (and the examples of 9.1.1): a client opens the stream
# with an optional XML declaration, then a <stream:stream ...> start tag in
# the namespace 'jabber:client' (servers talking to servers use
# 'jabber:server').
_BOM = b"\xef\xbb\xbf"  # UTF-8
_XML_DECLARATION = b"<?xml"
_STREAM_TAG = b"<stream:stream"
_XML_SPACE = b" \t\r\n"
_XMPP_MAX = 4096


def _xmpp_verdict(data: bytes) -> Verdict:
    position = 0
    if data[:3] == _BOM:
        position = 3
    elif _BOM.startswith(data):
        return NEED_MORE
    rest = data[position:]
    if rest.startswith(_XML_DECLARATION):
        end = data.find(b"?>", position)
        if end < 0:
            return NEED_MORE
        position = end + 2
        while position < len(data) and data[position] in _XML_SPACE:
            position += 1
        rest = data[position:]
    elif _XML_DECLARATION.startswith(rest):
        return NEED_MORE
    if len(rest) <= len(_STREAM_TAG):
        return NEED_MORE if _STREAM_TAG.startswith(rest) else NO_MATCH
    if not rest.startswith(_STREAM_TAG) or rest[len(_STREAM_TAG)] not in _XML_SPACE:
        return NO_MATCH
    close = rest.find(b">")
    if close < 0:
        return NEED_MORE
    start_tag = rest[:close]
    found = b"'jabber:client'" in start_tag or b'"jabber:client"' in start_tag
    return MATCH if found else NO_MATCH


def _xmpp(data: bytes) -> Verdict:
    data = data[:_XMPP_MAX]  # however many arrived in one read
    found = _xmpp_verdict(data)
    return NO_MATCH if found is NEED_MORE and len(data) >= _XMPP_MAX else found


@parameters()
def xmpp() -> FunctionMatcher:
    """Match an XMPP client's stream opening (``<stream:stream`` in jabber:client).

    Decides at the end of the stream's start tag, at most 4096 bytes in.

    >>> opening = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client'>"
    >>> xmpp()(opening).outcome.value
    'match'
    """
    return FunctionMatcher("xmpp", _XMPP_MAX, _xmpp)


# -- OpenVPN -------------------------------------------------------------------

# OpenVPN over TCP (src/openvpn/ssl_pkt.h and socket.h of the OpenVPN source,
# and its protocol description in doc/doxygen/network_protocol.md): every
# packet is prefixed with its length in two bytes; its first byte holds the
# opcode in the high 5 bits and the key id in the low 3.  A client starts
# with P_CONTROL_HARD_RESET_CLIENT_V2 (7) or, with tls-crypt-v2, V3 (10),
# key id 0.  The smallest such packet (no tls-auth) is opcode, 8-byte
# session id, an empty ack array and a 4-byte packet id: 14 bytes.
_OPENVPN_RESETS = {7 << 3: "v2", 10 << 3: "v3"}
_OPENVPN_SMALLEST, _OPENVPN_LARGEST = 14, 2048


def _openvpn_verdict(data: bytes) -> Verdict:
    if len(data) >= 2:
        length = int.from_bytes(data[:2], "big")
        if not _OPENVPN_SMALLEST <= length <= _OPENVPN_LARGEST:
            return NO_MATCH
    elif data and data[0] > _OPENVPN_LARGEST >> 8:
        return NO_MATCH
    if len(data) < 3:
        return NEED_MORE
    return MATCH if data[2] in _OPENVPN_RESETS else NO_MATCH


@parameters()
def openvpn() -> FunctionMatcher:
    """Match an OpenVPN client over TCP: its hard reset (v2, or v3 for tls-crypt-v2).

    Decides at the third byte: a plausible packet length and the opcode.

    >>> openvpn()(b"\\x00\\x0e\\x38").outcome.value
    'match'
    """
    return FunctionMatcher("openvpn", 3, _openvpn_verdict)


# -- RDP -----------------------------------------------------------------------

# [MS-RDPBCGR] 2.2.1.1: the Client X.224 Connection Request PDU is a TPKT
# header (RFC 1006: version 3, reserved 0, 2-byte length), an X.224 Class 0
# Connection Request TPDU (ITU-T X.224 13.3: length indicator = the TPKT
# length - 5, code 0xE0, DST-REF, SRC-REF, class 0), then optionally a
# routing token or "Cookie: mstshash=...\r\n", then optionally RDP_NEG_REQ
# (type 0x01, flags, length 0x0008, requested protocols).  Other users of
# TPKT + X.224 (ISO-on-TCP, S7comm) put parameters (0xC0...) where RDP puts
# its cookie or its negotiation request.
_RDP_MAX = 19
_COOKIE = b"Cookie: "


def _rdp_verdict(data: bytes) -> Verdict:
    start = prefix_verdict((b"\x03\x00",), data[:2])
    if start is not MATCH:
        return start
    if len(data) >= 4:
        length = int.from_bytes(data[2:4], "big")
        if not 11 <= length <= 4096:
            return NO_MATCH
        if len(data) >= 5 and data[4] != length - 5:
            return NO_MATCH
        if len(data) >= 6 and data[5] != 0xE0:
            return NO_MATCH
        if len(data) >= 8 and data[6:8] != b"\x00\x00":
            return NO_MATCH  # DST-REF is 0 in a connection request
        if length == 11 and len(data) >= 11:
            return MATCH  # no cookie, no negotiation request
    if len(data) < 12:
        return NEED_MORE
    after = data[11:]
    if after[0] == 0x01:  # RDP_NEG_REQ: type, flags, length 8 (little-endian)
        if len(after) < 4:
            return NEED_MORE
        return MATCH if after[2:4] == b"\x08\x00" else NO_MATCH
    return prefix_verdict((_COOKIE,), after[: len(_COOKIE)])


@parameters()
def rdp() -> FunctionMatcher:
    """Match an RDP client's X.224 Connection Request (TPKT, then its cookie or
    negotiation request).

    Decides at most 19 bytes in.
    """
    return FunctionMatcher("rdp", _RDP_MAX, _rdp_verdict)


# -- AMQP ----------------------------------------------------------------------

# AMQP 0-9-1 (section 4.2.2): "AMQP" 0 0 9 1.  AMQP 1.0 (OASIS, part 2
# section 2.2; part 5 sections 5.2.1 and 5.3.1): "AMQP", a protocol id (0
# plain, 2 TLS, 3 SASL) and version 1.0.0.
_AMQP_HEADERS = (
    b"AMQP\x00\x00\x09\x01",
    b"AMQP\x00\x01\x00\x00",
    b"AMQP\x02\x01\x00\x00",
    b"AMQP\x03\x01\x00\x00",
)


@parameters()
def amqp() -> FunctionMatcher:
    """Match an AMQP 0-9-1 or 1.0 (plain, TLS or SASL) protocol header.

    Decides at 8 bytes.
    """
    return FunctionMatcher("amqp", 8, lambda data: prefix_verdict(_AMQP_HEADERS, data))
