"""Wire-level pieces of the simulator: one request, early replies, body shapes, drops.

Kept apart from :mod:`batchgen.sim.app` and its route groups (:mod:`.service`,
:mod:`.task_routes`, :mod:`.openai_routes`, :mod:`.admin_routes`: routing and behaviour)
so that they read as the service's rules and this module as HTTP plumbing and the exact
JSON shapes of ``protocol.md``.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

from batchgen.api.catalog import IMAGE_SIZES, family_of, image_dimensions
from batchgen.errors import redact

__all__ = [
    "ChatRequest",
    "ClientGone",
    "ConnectionDrop",
    "Order",
    "Reply",
    "Request",
    "bad_request",
    "chat_reply",
    "chat_stream",
    "error",
    "forbidden",
    "json_bytes",
    "message_text",
    "no_channel",
    "parse_chat",
    "parse_images_request",
    "parse_order",
    "quiet_deliberate_drops",
    "reply_text",
    "retry_after",
    "spell_status",
]

Message = dict[str, Any]
Header = tuple[bytes, bytes]

MAX_BODY_BYTES = 32 * 1024 * 1024  # base64 reference images make bodies large
MAX_REFERENCES = 16
_JSON = (b"content-type", b"application/json")
_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class ConnectionDrop(Exception):
    """Raised by a handler after ``http.response.start`` so that uvicorn closes the socket."""


class ClientGone(Exception):
    """The client disconnected before its request body arrived; nothing can be answered."""


class Reply(Exception):
    """An answer decided early (an error, a 429, a business error); the app sends it.

    ``body`` is a JSON value, raw bytes, or None for an empty body.
    """

    def __init__(self, status: int, body: object = None, headers: Sequence[Header] = ()) -> None:
        self.status = status
        self.body = body
        self.headers = list(headers)
        super().__init__(status)


def error(status: int, code: str, message: str, headers: Sequence[Header] = ()) -> Reply:
    """An error answer in the gateway's OpenAI envelope, with a code of the seed's table."""
    envelope = {"message": message, "type": "new_api_error", "param": "", "code": code}
    return Reply(status, {"error": envelope}, headers)


def bad_request(message: str) -> Reply:
    """400 ``invalid_request``."""
    return error(400, "invalid_request", message)


def forbidden(model: str) -> Reply:
    """403 ``token_model_forbidden``."""
    return error(403, "token_model_forbidden", f"该令牌无权使用模型 {model} (model forbidden)")


def no_channel(model: str) -> Reply:
    """503 ``model_not_found``: no channel serves the model."""
    return error(503, "model_not_found", f"模型 {model} 无可用渠道 (no channel for model)")


def retry_after(wait: float | None, forced: float | None, style: str, wall_now: float) -> str:
    """The ``Retry-After`` value for a 429.

    ``forced`` if given, else the real ``wait`` (1 s when unknown, e.g. "upstream busy"),
    rounded up to whole seconds (at least 1); as an integer, or with ``style == "date"``
    as the HTTP date that many seconds after ``wall_now``.
    """
    seconds = math.ceil(forced) if forced is not None else max(1, math.ceil(wait or 1.0))
    if style == "date":
        return formatdate(math.ceil(wall_now) + seconds, usegmt=True)
    return str(seconds)


def json_bytes(value: object) -> bytes:
    """Compact UTF-8 JSON (Chinese messages stay readable)."""
    return _encoder.encode(value).encode()


class Request:
    """One HTTP request of the ASGI app, with helpers to read its body and answer it.

    Every answer carries ``X-Oneapi-Request-Id`` and the ``stamp`` headers; ``status``
    is the status sent, None until the answer starts; ``client`` is the caller's IP.
    """

    __slots__ = (
        "client", "headers", "method", "origin", "path", "query", "receive", "request_id",
        "send", "stamp", "status",
    )  # fmt: skip

    def __init__(
        self,
        method: str,
        path: str,
        query: bytes,
        headers: dict[bytes, bytes],
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
        request_id: bytes,
        origin: str,
        stamp: Sequence[Header] = (),
        client: str = "",
    ) -> None:
        self.client = client
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.receive = receive
        self.send = send
        self.request_id = request_id
        self.origin = origin
        self.stamp = stamp
        self.status: int | None = None

    def header(self, name: bytes) -> str:
        """The value of header ``name`` (lower case), or ``""``."""
        return self.headers.get(name, b"").decode("latin-1")

    async def body(self) -> bytes:
        """The whole request body. Raises Reply(413) past 32 MiB, ClientGone on hang-up."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise error(413, "invalid_request", "request body too large")
            if not message.get("more_body"):
                if not chunks:
                    return chunk
                chunks.append(chunk)
                return b"".join(chunks)
            chunks.append(chunk)

    async def json_object(self) -> dict[str, Any]:
        """The body as a JSON object. Raises Reply(400 ``invalid_request``) otherwise."""
        raw = await self.body()
        try:
            value = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise bad_request("request body is not valid JSON") from None
        if not isinstance(value, dict):
            raise bad_request("request body must be a JSON object")
        return value

    async def start(self, status: int, headers: Iterable[Header]) -> None:
        """Send the status line and headers (plus the request id) of a streamed answer."""
        self.status = status
        await self.send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, (b"x-oneapi-request-id", self.request_id), *self.stamp],
            }
        )

    async def chunk(self, data: bytes, *, more: bool = True) -> None:
        """Send part of the body; ``more=False`` ends it."""
        await self.send({"type": "http.response.body", "body": data, "more_body": more})

    async def respond(self, status: int, body: object, headers: Sequence[Header] = ()) -> None:
        """Send a whole answer: ``body`` is JSON, raw bytes, or None for an empty body."""
        extra = list(headers)
        if body is None:
            data = b""
        elif isinstance(body, bytes):
            data = body
        else:
            data = json_bytes(body)
            extra.append(_JSON)
        extra.append((b"content-length", str(len(data)).encode()))
        await self.start(status, extra)
        await self.send({"type": "http.response.body", "body": data})


# --- request bodies ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Order:
    """A checked image submission: what to draw, at which size, how many images."""

    model: str
    prompt: str
    aspect: str
    size: str
    images: int = 1


def _references(body: dict[str, Any]) -> int:
    count = 0
    for name in ("images", "urls"):  # the gateway's name and upstream's name
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad_request(f"{name} must be a list of URL or data: strings")
        for ref in value:
            if not ref.startswith(("http://", "https://", "data:image/")):
                raise bad_request(f"{name} entries must be http(s) URLs or data:image/ strings")
        count += len(value)
    if count > MAX_REFERENCES:
        raise bad_request(f"at most {MAX_REFERENCES} reference images")
    return count


def parse_order(
    body: dict[str, Any],
    check_model: Callable[[str], float],
    *,
    variants: bool = False,
    pixel_size: bool = False,
) -> Order:
    """Check a submission body; ``check_model`` refuses forbidden and unknown models.

    ``aspectRatio`` must be one the model's family accepts (any ratio or pixel size
    for a model batchgen has no family for); ``imageSize`` must be 1K, 2K or 4K and is
    honoured only by the families that do (others render 1K). ``variants`` reads the
    ``variants`` count and checks ``quality`` (``/draw/completions``); ``pixel_size``
    skips the family check for a ``WxH`` size (``/images/generations``).
    Raises Reply (400, 403 or 503).
    """
    model = body.get("model")
    prompt = body.get("prompt")
    if not isinstance(model, str) or not model:
        raise bad_request("model is required")
    if not isinstance(prompt, str) or not prompt.strip():
        raise bad_request("prompt is required")
    check_model(model)
    aspect = body.get("aspectRatio") or "auto"
    size = body.get("imageSize") or "1K"
    if not isinstance(aspect, str) or not isinstance(size, str):
        raise bad_request("aspectRatio and imageSize must be strings")
    family = family_of(model)
    if family is not None and not pixel_size and not family.accepts_ratio(aspect):
        raise bad_request(f"aspectRatio {aspect!r} is not supported by {model}")
    if size not in IMAGE_SIZES:
        raise bad_request(f"imageSize must be one of {', '.join(IMAGE_SIZES)}")
    if family is not None and not family.accepts_size(size):
        size = "1K"  # the family ignores imageSize, as upstream does
    try:
        image_dimensions(aspect, size)
    except ValueError:
        raise bad_request(f"aspectRatio {aspect!r} is not a ratio or pixel size") from None
    _references(body)
    images = 1
    if variants:
        count = body.get("variants", 1)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 10:
            raise bad_request("variants must be an integer from 1 to 10")
        images = count
        if body.get("quality", "auto") not in ("auto", "low", "medium", "high"):
            raise bad_request("quality must be auto, low, medium or high")
    return Order(model, prompt, aspect, size, images)


def parse_images_request(
    body: dict[str, Any], check_model: Callable[[str], float]
) -> tuple[Order, bool]:
    """Check an ``/images/generations`` body: the order, and whether to answer base64.

    ``size`` is ``auto`` (1024x1024) or ``WxH``; ``n`` is 1..10. Raises Reply.
    """
    n = body.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 10:
        raise bad_request("n must be an integer from 1 to 10")
    size = body.get("size") or "auto"
    if size != "auto":
        try:
            image_dimensions(str(size), "1K")
        except ValueError:
            raise bad_request(f"size {size!r} is not WIDTHxHEIGHT or auto") from None
    if body.get("quality", "auto") not in ("auto", "low", "medium", "high", "standard", "hd"):
        raise bad_request("quality is not supported")
    response_format = body.get("response_format", "url")
    if response_format not in ("url", "b64_json"):
        raise bad_request("response_format must be url or b64_json")
    order = parse_order({**body, "aspectRatio": size}, check_model, pixel_size=True)
    return Order(order.model, order.prompt, order.aspect, "1K", n), response_format == "b64_json"


def spell_status(status: str, style: str) -> str:
    """``status`` in the configured spelling: ``lower``, ``upper`` or ``success``."""
    if style == "upper":
        return status.upper()
    if style == "success" and status == "succeeded":
        return "success"
    return status


# --- chat ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A checked chat body: the model, the last user text, streaming, the error marker."""

    model: str
    last_user_text: str
    stream: bool
    failing: bool


def parse_chat(body: dict[str, Any]) -> ChatRequest:
    """Check a ``/chat/completions`` body. Raises Reply(400)."""
    model = body.get("model")
    messages = body.get("messages")
    if not isinstance(model, str) or not model:
        raise bad_request("model is required")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list")
    texts = [message_text(m) for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return ChatRequest(
        model=model,
        last_user_text=texts[-1] if texts else "",
        stream=bool(body.get("stream")),
        failing=any("[sim:error]" in text for text in texts),
    )


def message_text(message: dict[str, Any]) -> str:
    """The text of a chat message whose content is a string or a list of parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def reply_text(model: str, last_user_text: str) -> str:
    """The echo reply to a message that asks for no values (see :mod:`.chat`)."""
    echo = " ".join(last_user_text.split())[:200]
    return f"这是 {model} 的模拟回复。 (Simulated reply.) You said: {echo}"


def chat_reply(
    chat_id: str, created: int, model: str, text: str, usage: dict[str, int]
) -> dict[str, object]:
    """A non-streamed ``chat.completion`` object answering ``text``."""
    return {
        "id": chat_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
    }


def chat_stream(
    chat_id: str,
    created: int,
    model: str,
    text: str,
    failing: bool,
    usage: dict[str, int] | None = None,
) -> list[bytes]:
    """The SSE frames of a streamed reply: chunks, a ``: PING`` comment, ``[DONE]``;
    with ``usage``, a last chunk of no choices that carries it (OpenAI's include_usage).

    When ``failing``, the stream ends after the first content chunk with an error frame
    (and no ``[DONE]``), as the gateway does when upstream breaks mid-stream.
    """

    def frame(delta: dict[str, str], finish: str | None, **extra: object) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        chunk = {
            "id": chat_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [] if extra else [choice],
            **extra,
        }
        return b"data: " + json_bytes(chunk) + b"\n\n"

    words = text.split(" ")
    frames = [frame({"role": "assistant", "content": ""}, None), b": PING\n\n"]
    for i, word in enumerate(words):
        frames.append(frame({"content": word if i == 0 else " " + word}, None))
        if failing:
            envelope = {
                "message": "上游异常 (upstream error, simulated)",
                "type": "new_api_error",
                "param": "",
                "code": "upstream_error",
            }
            frames.append(b"data: " + json_bytes({"error": envelope}) + b"\n\n")
            return frames
    frames.append(frame({}, "stop"))
    if usage is not None:
        frames.append(frame({}, None, usage=usage))
    frames.append(b"data: [DONE]\n\n")
    return frames


# --- logging -----------------------------------------------------------------------------


def _is_drop(exc: BaseException | None) -> bool:
    if isinstance(exc, ConnectionDrop):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_drop(e) for e in exc.exceptions)
    return False


class _QuietDrops(logging.Filter):
    """Drops uvicorn's "Exception in ASGI application" records for deliberate drops only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and _is_drop(record.exc_info[1]))


_FILTER = _QuietDrops()


class _MaskAccessKeys(logging.Filter):
    """Masks secrets in access-log lines: ``getCredits?apikey=`` carries the key."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(re.sub(r"apikey=[^&\s\"]+", "apikey=***", message))
        if masked != message:
            record.msg, record.args = masked, ()
        return True


_ACCESS_FILTER = _MaskAccessKeys()


def quiet_deliberate_drops() -> None:
    """Keep uvicorn from logging tracebacks for :class:`ConnectionDrop`, and from logging
    keys if anyone enables its access log (idempotent)."""
    logger = logging.getLogger("uvicorn.error")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    access = logging.getLogger("uvicorn.access")
    if _ACCESS_FILTER not in access.filters:
        access.addFilter(_ACCESS_FILTER)
