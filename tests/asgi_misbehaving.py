"""An ASGI app that does each thing an app may do wrong, or that a server must
bound (tests/test_asgi.py serves it under ``twistd -n cmux``).

Written against the ASGI spec directly, without a framework, so that each
endpoint sends exactly the messages its name says.
"""

from __future__ import annotations

import asyncio
from typing import Any

#: What the app has seen, for the /seen endpoint.
SEEN: dict[str, Any] = {"flood_bytes": 0, "disconnected": False, "lifespan": []}
FLOOD_CHUNK = 64 * 1024
FLOOD_TOTAL = 32 * 1024 * 1024


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
    elif scope["type"] == "websocket":
        await websocket(scope, receive, send)
    else:
        await http(scope, receive, send)


async def lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        SEEN["lifespan"].append(message["type"])
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        else:
            await send({"type": "lifespan.shutdown.complete"})
            return


async def start(send: Any, status: int = 200) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain")],
        }
    )


async def http(scope: dict[str, Any], receive: Any, send: Any) -> None:
    path = scope["path"]
    if path == "/raise-before":
        raise RuntimeError("before the response")
    if path == "/nothing":
        return
    if path == "/raise-after":
        await start(send)
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise RuntimeError("after part of the response")
    if path == "/echo":
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await start(send)
        await send({"type": "http.response.body", "body": body})
        return
    if path == "/disconnect":
        SEEN["disconnected"] = False
        await start(send)
        await send({"type": "http.response.body", "body": b"wait\n", "more_body": True})
        await receive()  # the request (empty)
        message = await asyncio.wait_for(receive(), timeout=20)
        SEEN["disconnected"] = message["type"] == "http.disconnect"
        return
    if path == "/flood":
        SEEN["flood_bytes"] = 0
        await start(send)
        chunk = b"x" * FLOOD_CHUNK
        while SEEN["flood_bytes"] < FLOOD_TOTAL:
            SEEN["flood_bytes"] += len(chunk)
            more = SEEN["flood_bytes"] < FLOOD_TOTAL
            await send({"type": "http.response.body", "body": chunk, "more_body": more})
        return
    if path == "/seen":
        await start(send)
        body = repr({k: v for k, v in SEEN.items()}).encode()
        await send({"type": "http.response.body", "body": body})
        return
    await start(send, 404)
    await send({"type": "http.response.body", "body": b"not found"})


async def websocket(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert (await receive())["type"] == "websocket.connect"
    if scope["path"] == "/ws-reject":
        await send({"type": "websocket.close", "code": 1000})
        return
    if scope["path"] == "/ws-bad-subprotocol":  # one the client did not offer
        await send({"type": "websocket.accept", "subprotocol": "other"})
        return
    offered = "echo.v1" in scope["subprotocols"]
    await send(
        {"type": "websocket.accept", "subprotocol": "echo.v1" if offered else None}
    )
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": message.get("text") or ""})


async def failing_startup(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An app whose lifespan startup fails."""
    assert scope["type"] == "lifespan"
    await receive()
    await send({"type": "lifespan.startup.failed", "message": "no database"})


async def no_lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An app that knows only HTTP (raises on the lifespan scope)."""
    if scope["type"] != "http":
        raise ValueError(f"unsupported scope {scope['type']}")
    await start(send)
    await send({"type": "http.response.body", "body": b"plain"})
