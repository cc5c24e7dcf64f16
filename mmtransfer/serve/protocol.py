"""OpenAI chat-completions requests -> mmtransfer conversations, and the response bodies back.

A request's ``messages`` take OpenAI's parts: ``{"type": "text", "text": ...}``, ``{"type": "image_url",
"image_url": {"url": ...}}`` (a ``data:image/...;base64,`` URL, or a file under the server's media directory)
and ``{"type": "input_audio", "input_audio": {"data": <base64>, "format": "wav" | "flac" | ...}}``. Media are
decoded here, before a request joins a batch, so a bad one fails alone with a message naming it.
"""

from __future__ import annotations

import base64
import binascii
import io
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mmtransfer.chat import Message, check_conversation
from mmtransfer.data.sources import AUDIO_EXTS
from mmtransfer.errors import InputError
from mmtransfer.io import decode_image, load_image, read_audio

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class ChatRequest(BaseModel):
    """The body of ``POST /v1/chat/completions`` (the fields this server reads; others are ignored)."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[dict[str, Any]]
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)  # None: OpenAI's default, 1 (sampling)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None  # {"include_usage": true}: a last chunk carries the usage
    n: int | None = 1
    stop: str | list[str] | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int | None) -> int | None:
        if n not in (None, 1):
            raise ValueError("only n=1 is supported (send the request again for another answer)")
        return n

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, stop: str | list[str] | None) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > 4:
            raise ValueError(f"at most 4 stop sequences, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("a stop sequence must not be empty")
        return stops

    @field_validator("tools", "functions")
    @classmethod
    def _no_tools(cls, tools: list[Any] | None) -> None:
        if tools:
            raise ValueError("tool and function calling are not supported by this server")

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


@dataclass(frozen=True)
class GenSettings:
    """What must be equal for requests to share one ``model.chat`` call."""

    max_new_tokens: int
    do_sample: bool
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()

    @classmethod
    def of(cls, request: ChatRequest, default_max_tokens: int) -> GenSettings:
        """Temperature 0 is greedy (sampling settings then do not matter, so all greedy requests match)."""
        tokens = request.max_completion_tokens or request.max_tokens or default_max_tokens
        stop = tuple(request.stop or ())
        if request.temperature == 0:
            return cls(tokens, False, stop=stop)
        return cls(tokens, True, 1.0 if request.temperature is None else request.temperature, request.top_p or 1.0,
                   stop)


def to_conversation(messages: list[dict[str, Any]], media_dir: Path | None) -> list[Message]:
    """OpenAI messages -> an mmtransfer conversation with decoded media (PIL images, audio arrays [T]);
    ``InputError`` names the message and part that cannot be used."""
    out: list[Message] = []
    for i, message in enumerate(messages, start=1):
        converted = {k: message[k] for k in ("role", "content") if k in message}
        if isinstance(converted.get("role"), str):
            converted["role"] = ROLES.get(converted["role"], converted["role"])
        if isinstance(converted.get("content"), list):
            converted["content"] = [_part(p, f"message {i} part {k}", media_dir)
                                    for k, p in enumerate(converted["content"], start=1)]
        out.append(converted)
    check_conversation(out, generation=True)
    return out


def _part(part: Any, where: str, media_dir: Path | None) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        return part
    if kind == "image_url":
        spec = part.get("image_url")
        url = spec.get("url") if isinstance(spec, dict) else spec
        if not isinstance(url, str):
            raise InputError(f"{where}: an image_url part needs 'image_url': {{'url': ...}}")
        return {"type": "image", "image": _image(url, where, media_dir)}
    if kind == "input_audio":
        return _audio(part.get("input_audio"), where)
    raise InputError(f"{where}: unknown part type {kind!r}; this server takes text, image_url, input_audio")


def _b64(data: str, where: str) -> bytes:
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as err:
        raise InputError(f"{where}: the data is not valid base64 ({err})") from None
    if not raw:
        raise InputError(f"{where}: the data is empty")
    return raw


def _image(url: str, where: str, media_dir: Path | None) -> Image.Image:
    """A data URL or a local file -> an RGB image."""
    if url.startswith("data:"):
        header, comma, payload = url.partition(",")
        if not comma or not header.endswith(";base64"):
            raise InputError(f"{where}: a data URL must read data:<type>;base64,<data>")
        return _decode_image(_b64(payload, where), where)
    if url.startswith(("http://", "https://")):
        raise InputError(f"{where}: this server fetches no URLs; send the image as a data:image/...;base64 URL")
    return load_image(local_file(url, where, media_dir))


def _decode_image(data: bytes, where: str) -> Image.Image:
    """Bytes -> an RGB image, through the decoder files and shards use (it refuses decompression bombs)."""
    try:
        return decode_image(io.BytesIO(data), "(inline)")
    except InputError as err:
        raise InputError(f"{where}: the image does not decode: {err}") from None


def local_file(ref: str, where: str, media_dir: Path | None) -> Path:
    """A path (or file:// URL) a client named, resolved inside ``media_dir``; anything else is refused."""
    if media_dir is None:
        raise InputError(f"{where}: this server reads no local files (start it with --media-dir DIR); "
                         "send the media inline as base64")
    root = media_dir.resolve()
    path = (root / ref.removeprefix("file://")).resolve()
    if not path.is_relative_to(root):
        raise InputError(f"{where}: {ref!r} is outside the server's media directory")
    return path


def _audio(spec: Any, where: str) -> dict[str, Any]:
    """``{"data": base64, "format": ...}`` -> an audio part holding float32 mono samples [T] and their rate."""
    if not isinstance(spec, dict) or not isinstance(spec.get("data"), str):
        raise InputError(f"{where}: an input_audio part needs 'input_audio': {{'data': <base64>, 'format': 'wav'}}")
    fmt = spec.get("format", "wav")
    if fmt not in AUDIO_EXTS:
        raise InputError(f"{where}: audio format {fmt!r} is not one of {', '.join(AUDIO_EXTS)}")
    try:
        wave, rate = read_audio(_b64(spec["data"], where), f"{where} ({fmt})")
    except InputError as err:
        raise InputError(f"{where}: the {fmt} audio does not decode: {err}") from None
    return {"type": "audio", "audio": wave, "sample_rate": rate}


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def completion(cid: str, model: str, text: str, finish_reason: str, usage: dict[str, int]) -> dict[str, Any]:
    """A ``chat.completion`` object with one choice and its token ``usage``."""
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish_reason}], "usage": usage}


def usage_chunk(cid: str, model: str, usage: dict[str, int]) -> dict[str, Any]:
    """The last chunk of a stream that asked for ``stream_options.include_usage``: no choices, the usage."""
    return {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [], "usage": usage}


def chunk(cid: str, model: str, delta: dict[str, str], finish_reason: str | None = None) -> dict[str, Any]:
    """A ``chat.completion.chunk`` object (one server-sent event of a stream)."""
    return {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


def error(message: str, kind: str = "invalid_request_error", code: str | None = None) -> dict[str, Any]:
    """OpenAI's error body."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}
