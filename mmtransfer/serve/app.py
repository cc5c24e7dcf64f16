"""The HTTP app: ``POST /v1/chat/completions`` (OpenAI's protocol, streaming or not), ``GET /v1/models``,
``GET /health`` and the chat page at ``/``.

Built on FastAPI and uvicorn: both are maintained and widely deployed, async (a request waiting for its
batch holds no thread, and the event loop keeps accepting while the model runs on its own thread), and
FastAPI validates the body against pydantic models, which also give the OpenAPI schema at ``/docs``.
The official ``openai`` client needs nothing more than an HTTP server speaking JSON and server-sent
events; ``vllm`` and ``llama.cpp``'s server follow the same protocol, so clients written for them work.

Limits: a body over ``max_body_mb`` gets 413 before it is parsed; a request that cannot be used (a
malformed message list, bad base64, an image or clip that does not decode, prompt + ``max_tokens`` over
the decoder's context, an unknown model) gets 400 / 404 with OpenAI's error body naming the problem,
and the server goes on serving. See ``batcher`` for batching and streaming.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from mmtransfer.chat import Message, media_parts
from mmtransfer.errors import MMTransferError
from mmtransfer.serve.batcher import Batcher, Event, Job
from mmtransfer.serve.protocol import (
    ChatRequest,
    GenSettings,
    chunk,
    completion,
    completion_id,
    error,
    to_conversation,
    usage_chunk,
)

log = logging.getLogger("mmtransfer.serve")


@dataclass
class ServeSettings:
    """Server options (the ``mmtransfer serve`` flags)."""

    model_name: str
    max_batch: int = 16
    batch_wait_ms: float = 5.0
    max_body_mb: float = 20.0
    default_max_tokens: int = 128
    media_dir: Path | None = None


DRAIN_BYTES = 64 * 2**20  # past this much unread body a refused client is cut off without an answer


class BodyLimit:
    """ASGI middleware: reads a request's whole body and answers 413 once it passes ``max_bytes``."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send, more=True)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._refuse(scope, receive, send, more)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: the disconnect
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        return await self.app(scope, replay, send)

    async def _refuse(self, scope: dict[str, Any], receive: Any, send: Any, more: bool) -> None:
        """Answer 413. The unread rest of the body is read and dropped first (up to ``DRAIN_BYTES``):
        closing a socket with unread data makes the kernel send a reset, and the client may then lose
        the answer before reading it."""
        drained = 0
        while more and drained < DRAIN_BYTES:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            drained += len(message.get("body", b""))
            more = message.get("more_body", False)
        limit = f"{self.max_bytes / 2**20:g} MB"
        body = error(f"the request body is over the server's limit of {limit} (--max-body-mb)", code="too_large")
        await JSONResponse(body, 413, headers={"connection": "close"})(scope, receive, send)


def create_app(model: Any, settings: ServeSettings) -> FastAPI:
    """The app serving ``model`` (an mmtransfer model) under ``settings.model_name``."""
    batcher = Batcher(model, settings.max_batch, settings.batch_wait_ms / 1000)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker = asyncio.create_task(batcher.run())
        yield
        worker.cancel()
        batcher.close()

    app = FastAPI(title="mmtransfer", summary="OpenAI-compatible chat completions", lifespan=lifespan)
    app.state.batcher, app.state.settings = batcher, settings
    app.add_middleware(BodyLimit, max_bytes=int(settings.max_body_mb * 2**20))
    app.add_exception_handler(MMTransferError, _user_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    _add_routes(app, batcher, settings)
    return app


def _add_routes(app: FastAPI, batcher: Batcher, settings: ServeSettings) -> None:
    page = (files("mmtransfer.serve") / "static" / "index.html").read_text(encoding="utf-8")
    started = int(time.time())

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:  # the page declares no icon; answer browsers' request without a 404
        return Response(status_code=204)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": settings.model_name, "queued": batcher.queue.qsize(),
                **asdict(batcher.stats)}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": started,
                                            "owned_by": "mmtransfer"}]}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatRequest) -> Response:
        if body.model != settings.model_name:
            message = f"the model '{body.model}' does not exist; this server serves '{settings.model_name}'"
            return JSONResponse(error(message, code="model_not_found"), 404)
        conversation = await asyncio.to_thread(_prepare, batcher.model, body, settings)
        job = Job(conversation, GenSettings.of(body, settings.default_max_tokens), stream=bool(body.stream))
        await batcher.queue.put(job)
        event = await job.events.get()
        while not body.stream and event[0] == "start":
            event = await job.events.get()
        if event[0] == "error":
            return _error_response(event[1])
        cid = completion_id()
        if body.stream:
            return StreamingResponse(_sse(job, event, cid, settings.model_name, body.include_usage),
                                     media_type="text/event-stream")
        return JSONResponse(completion(cid, settings.model_name, event[1], event[2], event[3]))


def _prepare(model: Any, body: ChatRequest, settings: ServeSettings) -> list[Message]:
    """The request's conversation with decoded media; ``InputError`` for a part the model has no encoder for."""
    conversation = to_conversation(body.messages, settings.media_dir)
    for part in media_parts(conversation):
        model.processor.media_ids(part)
    return conversation


async def _sse(job: Job, event: Event, cid: str, model: str, include_usage: bool) -> AsyncIterator[str]:
    """The server-sent events of a stream: the role, each new piece of text, the finish reason, the usage (when
    asked for), ``[DONE]``."""
    yield _data(chunk(cid, model, {"role": "assistant", "content": ""}))
    sent = ""
    while True:
        if event[0] == "delta":
            sent += event[1]
            yield _data(chunk(cid, model, {"content": event[1]}))
        elif event[0] == "done":
            text, reason = event[1], event[2]
            if text.startswith(sent) and len(text) > len(sent):
                yield _data(chunk(cid, model, {"content": text[len(sent) :]}))
            yield _data(chunk(cid, model, {}, reason))
            if include_usage:
                yield _data(usage_chunk(cid, model, event[3]))
            yield "data: [DONE]\n\n"
            return
        elif event[0] == "error":
            yield _data(json.loads(_error_response(event[1]).body))
            return
        event = await job.events.get()


def _data(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def _error_response(err: Exception) -> JSONResponse:
    """A user error (``MMTransferError``: bad input, context overflow) -> 400 with its message; else 500."""
    if isinstance(err, MMTransferError):
        return JSONResponse(error(str(err)), 400)
    return JSONResponse(error("internal server error (see the server log)", "server_error"), 500)


async def _user_error(request: Request, err: Exception) -> JSONResponse:
    return _error_response(err)


async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    """A body that does not match ``ChatRequest`` -> 400 naming each field and what is wrong with it."""
    problems = [
        f"the body is not valid JSON ({e.get('ctx', {}).get('error', e['msg'])} at character {e['loc'][-1]})"
        if e["type"] == "json_invalid" else f"{'.'.join(str(x) for x in e['loc'][1:]) or 'body'}: {e['msg']}"
        for e in err.errors()
    ]
    return JSONResponse(error("; ".join(problems)), 400)


def run(model: Any, settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until interrupted."""
    uvicorn.run(create_app(model, settings), host=host, port=port, log_level="info")


@contextmanager
def background(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` from a thread (tests, notebooks) on ``port`` (0: a free one); yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the server stopped while starting (see its log)")
            time.sleep(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
