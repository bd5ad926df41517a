"""A FastAPI app served by txcmux beside gRPC and SSH (see fastapi.toml).

Nothing here knows about txcmux: this is an ordinary ASGI app.  Its
lifespan prints one line at startup and one at shutdown; ``/`` says who
the client is as the app sees it; ``/stream`` sends its first line at once
and the second only after ``/release`` is asked for; ``/ws`` echoes
WebSocket messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, asyncio.Event]]:
    print("fastapi_app: lifespan startup", flush=True)
    yield {"released": asyncio.Event()}
    print("fastapi_app: lifespan shutdown", flush=True)


app = FastAPI(lifespan=lifespan)


@app.get("/")
async def who(request: Request) -> dict[str, str]:
    client = request.client.host if request.client else ""
    return {
        "client": client,
        "scheme": request.url.scheme,
        "protocol": f"HTTP/{request.scope['http_version']}",
    }


@app.get("/stream")
async def stream(request: Request) -> StreamingResponse:
    released: asyncio.Event = request.state.released
    released.clear()

    async def lines() -> AsyncIterator[bytes]:
        yield b"first\n"
        await asyncio.wait_for(released.wait(), timeout=10)
        yield b"second\n"

    return StreamingResponse(lines(), media_type="text/plain")


@app.get("/release")
async def release(request: Request) -> str:
    request.state.released.set()
    return "released"


@app.websocket("/ws")
async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            await websocket.send_text("echo " + await websocket.receive_text())
    except WebSocketDisconnect:
        pass
