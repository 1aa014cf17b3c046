"""Typed values for the service's answers, and the parsers that build them.

The service answers in several shapes (see protocol.md): flat objects or the
``{code, msg, data}`` envelope, ``results[]`` or a single ``url``, status spellings
that vary in case and wording, "not found" as HTTP 404 or as ``code: -22``. The
parsers here accept every variant and return one typed value; anything they cannot
read raises :class:`~batchgen.errors.ResponseFormatError`.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from batchgen.api.messages import error_from_mapping
from batchgen.errors import (
    BusinessError,
    ResponseFormatError,
    TaskNotFoundError,
)

__all__ = [
    "ChatChunk",
    "ChatCompletion",
    "ChatUsage",
    "Credits",
    "FailureReason",
    "ImagesResult",
    "ModelStatus",
    "ResultImage",
    "Submission",
    "TaskInfo",
    "TaskStatus",
    "parse_chat_chunk",
    "parse_chat_completion",
    "parse_credits",
    "parse_images",
    "parse_model_status",
    "parse_submission",
    "parse_task",
    "unwrap",
]

#: The business code upstream clients see for an unknown task id.
CODE_TASK_NOT_FOUND = -22


class TaskStatus(enum.StrEnum):
    """Where a remote task is. ``VIOLATION`` is the unified route's moderation end."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    VIOLATION = "violation"

    @property
    def terminal(self) -> bool:
        """Whether the task has ended (it will not change again)."""
        return self is not TaskStatus.RUNNING

    @classmethod
    def parse(cls, value: object) -> TaskStatus:
        """Read any spelling the service uses (``success``, ``SUCCEEDED``, ``queued``...).

        Raises ResponseFormatError for a value that names no known state.
        """
        if not isinstance(value, str):
            raise ResponseFormatError(f"task status is {type(value).__name__}, not a string")
        status = _STATUS_SPELLINGS.get(value.strip().lower().replace("-", "_"))
        if status is None:
            raise ResponseFormatError(f"unknown task status {value[:40]!r}")
        return status


_STATUS_SPELLINGS: dict[str, TaskStatus] = {
    **dict.fromkeys(
        (
            "running",
            "pending",
            "queued",
            "queue",
            "processing",
            "in_progress",
            "submitted",
            "starting",
            "started",
            "waiting",
            "created",
        ),
        TaskStatus.RUNNING,
    ),
    **dict.fromkeys(
        (
            "succeeded",
            "success",
            "successful",
            "succeed",
            "completed",
            "complete",
            "done",
            "finished",
        ),
        TaskStatus.SUCCEEDED,
    ),
    **dict.fromkeys(
        ("failed", "failure", "fail", "error", "cancelled", "canceled"), TaskStatus.FAILED
    ),
    **dict.fromkeys(("violation", "violated", "blocked", "moderated"), TaskStatus.VIOLATION),
}


class FailureReason(enum.StrEnum):
    """Why a task failed. Only ``ERROR`` is worth resubmitting."""

    OUTPUT_MODERATION = "output_moderation"
    INPUT_MODERATION = "input_moderation"
    ERROR = "error"

    @property
    def final(self) -> bool:
        """Whether resubmitting the same request cannot help (moderation)."""
        return self is not FailureReason.ERROR


@dataclass(frozen=True, slots=True)
class ResultImage:
    """One result image: a URL to download at once (it expires), or inline bytes."""

    url: str | None = None
    data: bytes | None = field(default=None, repr=False)
    content: str = ""
    revised_prompt: str = ""


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """A remote task as the service reports it."""

    id: str
    status: TaskStatus
    progress: int = 0
    results: tuple[ResultImage, ...] = ()
    failure_reason: str = ""
    error: str = ""
    request_id: str | None = None

    @property
    def reason(self) -> FailureReason | None:
        """The failure reason as an enum; a violation counts as output moderation."""
        if self.status is TaskStatus.VIOLATION and not self.failure_reason:
            return FailureReason.OUTPUT_MODERATION
        try:
            return FailureReason(self.failure_reason)
        except ValueError:
            return FailureReason.ERROR if self.status.terminal and not self.succeeded else None

    @property
    def succeeded(self) -> bool:
        """Whether the task ended with images."""
        return self.status is TaskStatus.SUCCEEDED

    @property
    def urls(self) -> tuple[str, ...]:
        """The result URLs, in order."""
        return tuple(r.url for r in self.results if r.url)


@dataclass(frozen=True, slots=True)
class Submission:
    """The answer to an asynchronous submission: the remote task id."""

    task_id: str
    status: TaskStatus = TaskStatus.RUNNING
    progress: int = 0
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class ImagesResult:
    """The answer of the synchronous ``/v1/images/generations`` route."""

    created: int
    images: tuple[ResultImage, ...]
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Credits:
    """An account balance."""

    credits: float


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """Whether a model currently has a channel."""

    model: str
    available: bool
    error: str = ""


@dataclass(frozen=True, slots=True)
class ChatUsage:
    """The tokens a chat answer says it used (OpenAI's ``usage``)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass(frozen=True, slots=True)
class ChatCompletion:
    """A chat completion: the assistant's text plus the raw body."""

    id: str
    model: str
    content: str
    finish_reason: str | None
    raw: Mapping[str, Any] = field(repr=False)
    usage: ChatUsage | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class ChatChunk:
    """One streamed chat delta. ``usage`` is on the last chunk, when the stream was asked
    to include it (``stream_options.include_usage``); ``request_id`` is the stream's."""

    delta: str
    finish_reason: str | None
    raw: Mapping[str, Any] = field(repr=False)
    usage: ChatUsage | None = None
    request_id: str | None = None


# --- parsers ----------------------------------------------------------------------------


def _object(body: object, route: str, what: str = "response") -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise ResponseFormatError(f"{what} is {type(body).__name__}, not an object", route=route)
    return body


def unwrap(body: object, *, route: str, request_id: str | None = None) -> Mapping[str, Any]:
    """Return the payload of a 2xx body, flat or inside ``{code, msg, data}``.

    Raises TaskNotFoundError for ``code: -22``, BusinessError for any other non-zero
    code (the message read from ``msg``, ``error.message`` or ``message``), and
    ResponseFormatError for a body that is not an object.
    """
    obj = _object(body, route)
    if "code" in obj and "id" not in obj:
        code = obj.get("code")
        if code not in (0, "0", 200, "success"):
            message = error_from_mapping(obj) or f"business error code {code}"
            code_text = str(code)
            if code in (CODE_TASK_NOT_FOUND, str(CODE_TASK_NOT_FOUND)):
                raise TaskNotFoundError(
                    message,
                    status=200,
                    code="task_not_found",
                    route=route,
                    request_id=request_id,
                )
            raise BusinessError(
                message, status=200, code=f"code_{code_text}", route=route, request_id=request_id
            )
        data = obj.get("data")
        if data is None:
            return {}
        return _object(data, route, "data")
    if "success" in obj and obj.get("success") is False:
        raise BusinessError(
            error_from_mapping(obj) or "request failed",
            status=200,
            route=route,
            request_id=request_id,
        )
    error = obj.get("error")
    if isinstance(error, Mapping) and error.get("message") and "id" not in obj:
        raise BusinessError(
            str(error.get("message")),
            status=200,
            code=str(error.get("code") or "business_error"),
            route=route,
            request_id=request_id,
        )
    return obj


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _progress(value: object) -> int:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0
    return max(0, min(100, int(number)))


def _results(data: Mapping[str, Any], route: str) -> tuple[ResultImage, ...]:
    results = data.get("results")
    images: list[ResultImage] = []
    if isinstance(results, list):
        for item in results:
            if isinstance(item, str):
                images.append(ResultImage(url=item))
            elif isinstance(item, Mapping):
                url = _text(item.get("url")) or None
                inline = _decode_b64(item.get("b64_json"), route)
                if url or inline:
                    images.append(
                        ResultImage(url=url, data=inline, content=_text(item.get("content")))
                    )
    elif results not in (None, ""):
        raise ResponseFormatError("results is not a list", route=route)
    if not images:
        url = data.get("url")
        if isinstance(url, str) and url:
            images.append(ResultImage(url=url, content=_text(data.get("content"))))
        elif isinstance(url, list):
            images.extend(ResultImage(url=u) for u in url if isinstance(u, str) and u)
    return tuple(images)


def _decode_b64(value: object, route: str) -> bytes | None:
    if not isinstance(value, str) or not value:
        return None
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ResponseFormatError("b64_json is not valid base64", route=route) from exc


def parse_task(body: object, *, route: str, request_id: str | None = None) -> TaskInfo:
    """Read a task (a poll answer, a ``json`` reply or a stream frame)."""
    data = unwrap(body, route=route, request_id=request_id)
    task_id = data.get("id") or data.get("task_id") or data.get("taskId")
    if not isinstance(task_id, str) or not task_id:
        raise ResponseFormatError("task has no id", route=route)
    status = TaskStatus.parse(data.get("status", "running"))
    results = _results(data, route)
    if status is TaskStatus.SUCCEEDED and not results:
        raise ResponseFormatError(f"task {task_id} succeeded without any result image", route=route)
    return TaskInfo(
        id=task_id,
        status=status,
        progress=100 if status.terminal else _progress(data.get("progress")),
        results=results,
        failure_reason=_text(data.get("failure_reason")),
        error=_text(data.get("error")) or _text(data.get("message")),
        request_id=request_id,
    )


def parse_submission(body: object, *, route: str, request_id: str | None = None) -> Submission:
    """Read the answer to an asynchronous submission (flat or enveloped)."""
    data = unwrap(body, route=route, request_id=request_id)
    task_id = data.get("id") or data.get("task_id") or data.get("taskId")
    if not isinstance(task_id, str) or not task_id:
        raise ResponseFormatError("submission answer has no task id", route=route)
    raw_status = data.get("status")
    status = TaskStatus.parse(raw_status) if raw_status is not None else TaskStatus.RUNNING
    return Submission(
        task_id=task_id,
        status=status,
        progress=_progress(data.get("progress")),
        request_id=request_id,
    )


def parse_images(body: object, *, route: str, request_id: str | None = None) -> ImagesResult:
    """Read ``/v1/images/generations``: ``{created, data: [{url|b64_json, revised_prompt}]}``."""
    obj = _object(body, route)
    if "data" in obj and isinstance(obj.get("data"), list):
        items = obj["data"]
    else:
        unwrap(obj, route=route, request_id=request_id)
        raise ResponseFormatError("images answer has no data list", route=route)
    images: list[ResultImage] = []
    for item in items:
        if not isinstance(item, Mapping):
            raise ResponseFormatError("images data item is not an object", route=route)
        url = _text(item.get("url")) or None
        inline = _decode_b64(item.get("b64_json"), route)
        if not url and inline is None:
            raise ResponseFormatError("image has neither url nor b64_json", route=route)
        images.append(
            ResultImage(url=url, data=inline, revised_prompt=_text(item.get("revised_prompt")))
        )
    created = obj.get("created")
    return ImagesResult(
        created=created if isinstance(created, int) else 0,
        images=tuple(images),
        request_id=request_id,
    )


def parse_credits(body: object, *, route: str) -> Credits:
    """Read ``{"code": 0, "data": {"credits": N}}``."""
    data = unwrap(body, route=route)
    value = data.get("credits")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ResponseFormatError("credits missing", route=route)
    try:
        return Credits(credits=float(value))
    except ValueError as exc:
        raise ResponseFormatError("credits is not a number", route=route) from exc


def parse_model_status(body: object, *, model: str, route: str) -> ModelStatus:
    """Read ``{"code": 0, "data": {"status": bool, "error": ""}}``."""
    data = unwrap(body, route=route)
    status = data.get("status")
    if not isinstance(status, bool):
        raise ResponseFormatError("model status is not a boolean", route=route)
    return ModelStatus(model=model, available=status, error=_text(data.get("error")))


def _usage(obj: Mapping[str, Any]) -> ChatUsage | None:
    usage = obj.get("usage")
    if not isinstance(usage, Mapping):
        return None
    prompt, completion, total = (
        usage.get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")
    )
    if not (_count(prompt) and _count(completion)):
        return None
    return ChatUsage(prompt, completion, total if _count(total) else prompt + completion)


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_chat_completion(
    body: object, *, route: str, request_id: str | None = None
) -> ChatCompletion:
    """Read an OpenAI chat completion."""
    obj = unwrap(body, route=route)
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise ResponseFormatError("chat completion has no choices", route=route)
    message = choices[0].get("message")
    content = _text(message.get("content")) if isinstance(message, Mapping) else ""
    finish = choices[0].get("finish_reason")
    return ChatCompletion(
        id=_text(obj.get("id")),
        model=_text(obj.get("model")),
        content=content,
        finish_reason=finish if isinstance(finish, str) else None,
        raw=obj,
        usage=_usage(obj),
        request_id=request_id,
    )


def parse_chat_chunk(body: object, *, route: str, request_id: str | None = None) -> ChatChunk:
    """Read one ``chat.completion.chunk``; an ``{"error": ...}`` frame raises."""
    obj = unwrap(body, route=route)
    choices = obj.get("choices")
    delta = ""
    finish: str | None = None
    if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
        d = choices[0].get("delta")
        if isinstance(d, Mapping):
            delta = _text(d.get("content"))
        f = choices[0].get("finish_reason")
        finish = f if isinstance(f, str) else None
    return ChatChunk(
        delta=delta, finish_reason=finish, raw=obj, usage=_usage(obj), request_id=request_id
    )
