"""The one place where HTTP becomes values or errors: how the service's answers map to our tree.

Every answer of the service passes through here on its way to a typed value
(:mod:`batchgen.api.responses`) or one error of :mod:`batchgen.errors`:

* :func:`translate_transport_error`: no answer at all (connect, timeout, lost
  connection), deciding whether the request may have landed;
* :func:`decode_response`: a 2xx JSON body and the request id, or the error for
  anything else;
* :func:`error_for_status` with its code table: an error answer (status, body code,
  message, ``Retry-After`` through :func:`parse_retry_after`) as the matching
  :class:`~batchgen.errors.APIError` subclass. New error forms of the service (and of
  gateways in front of it) are taught here;
* :func:`sse_payloads`: the ``data:`` payloads of a server-sent event stream;
* :func:`guard_loggers`: the redacting filter on the HTTP stack's loggers, which log
  every URL.

The functions are module level so the client, the downloader and tests share them.
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Final

import httpx2 as httpx

from batchgen.api.messages import channel_named, error_from_mapping, model_named, parse_stated_limit
from batchgen.errors import (
    Accepted,
    AccessDeniedError,
    APIError,
    AuthenticationError,
    BadRequestError,
    BatchgenError,
    ConfigError,
    ConnectError,
    ConnectionLostError,
    ModelUnavailableError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitError,
    RequestTimeoutError,
    ResponseFormatError,
    TaskNotFoundError,
    TransportError,
    UpstreamError,
    redact,
)

__all__ = [
    "decode_response",
    "error_for_status",
    "guard_loggers",
    "parse_retry_after",
    "sse_payloads",
    "translate_transport_error",
]


# --- translation (module level so the downloader and tests share it) --------------------


def translate_transport_error(exc: httpx.HTTPError, route: str) -> BatchgenError:
    """Turn an httpx failure into our tree, deciding whether the request may have landed.

    A connection never made (or a pool wait) means the request did not leave: not
    accepted. Anything after the request was written means unknown.
    """
    detail = redact(str(exc) or type(exc).__name__)
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return RequestTimeoutError(
            f"timed out before sending ({type(exc).__name__})", route=route, accepted=Accepted.NO
        )
    if isinstance(exc, httpx.TimeoutException):
        return RequestTimeoutError(
            f"no answer in time ({type(exc).__name__}); the service may have accepted it",
            route=route,
            accepted=Accepted.UNKNOWN,
        )
    if isinstance(exc, httpx.ConnectError):
        return ConnectError(f"cannot connect: {detail}", route=route)
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return ConnectionLostError(f"connection lost before the answer: {detail}", route=route)
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return ConfigError(f"{route}: {detail}")
    return TransportError(f"{type(exc).__name__}: {detail}", route=route)


def decode_response(response: httpx.Response, route: str) -> tuple[object, str | None]:
    """Return ``(json body, request id)`` for a 2xx answer; raise for anything else."""
    request_id = response.headers.get("x-oneapi-request-id")
    body: object = None
    text = response.text
    if text.strip():
        try:
            body = json.loads(text)
        except ValueError:
            body = None
            if response.is_success:
                raise ResponseFormatError(
                    f"HTTP {response.status_code} body is not JSON: {text[:120]!r}", route=route
                ) from None
    if response.is_success:
        if body is None:
            raise ResponseFormatError(
                f"HTTP {response.status_code} with an empty body", route=route
            )
        return body, request_id
    raise error_for_status(response, body, route, request_id)


_BY_CODE: Final[Mapping[str, type[APIError]]] = {
    "invalid_api_key": AuthenticationError,
    "token_invalid": AuthenticationError,
    "access_denied": AccessDeniedError,
    "token_model_forbidden": PermissionDeniedError,
    "insufficient_user_quota": QuotaExceededError,
    "pre_consume_token_quota_failed": QuotaExceededError,
    "task_not_found": TaskNotFoundError,
    "rate_limit_exceeded": RateLimitError,
    "model_not_found": ModelUnavailableError,
    "upstream_error": UpstreamError,
}


def _code_and_message(response: httpx.Response | None, body: object) -> tuple[str, str]:
    message = ""
    code = ""
    if isinstance(body, Mapping):
        message = error_from_mapping(body)
        error = body.get("error")
        if isinstance(error, Mapping) and error.get("code"):
            code = str(error.get("code"))
        elif body.get("code") not in (None, 0):
            code = str(body.get("code"))
    elif response is not None and response.text.strip():
        message = response.text.strip()[:200]
    return code, message


def _class_for(status: int | None, code: str, route: str) -> type[APIError]:
    """The error class of an answer, from its status first and its code second."""
    if status == 401:
        return AuthenticationError  # the gateway sends an empty code for every bad key
    if status == 403:
        known = _BY_CODE.get(code)
        if known is not None and issubclass(known, PermissionDeniedError | QuotaExceededError):
            return known
        return PermissionDeniedError  # no code: "this token has no access to model X"
    if status == 404:
        if code in ("", "task_not_found") and "result" in route:
            return TaskNotFoundError
        return _BY_CODE.get(code, BadRequestError)
    if status == 429:
        return RateLimitError
    if status == 503:
        return ModelUnavailableError
    if (status is not None and status >= 500) or status in (408, 425):
        return UpstreamError
    if status is not None and status >= 400:
        return _BY_CODE.get(code, BadRequestError)
    return _BY_CODE.get(code, UpstreamError)


def error_for_status(
    response: httpx.Response | None, body: object, route: str, request_id: str | None
) -> APIError:
    """Build the APIError for an error answer (or an error frame when ``response`` is None).

    Reads both the seed's codes and the gateway's forms (an empty code with a message
    that says what happened); see the table in README.md, "Errors the service sends".
    """
    status = response.status_code if response is not None else None
    code, message = _code_and_message(response, body)
    cls = _class_for(status, code, route)
    common: dict[str, object] = {
        "status": status,
        "code": code or None,
        "route": route,
        "request_id": request_id,
    }
    if cls is RateLimitError:
        headers = response.headers if response is not None else None
        return RateLimitError(
            message or "rate limited (the answer had no body)",
            retry_after=parse_retry_after(headers.get("retry-after")) if headers else None,
            limit=parse_stated_limit(message),
            empty=body is None and not message,
            server=headers.get("x-new-api-version") if headers else None,
            **common,
        )
    text = message or cls.default_code
    if issubclass(cls, PermissionDeniedError):
        return cls(text, model=model_named(message), **common)
    if cls is ModelUnavailableError:
        model, group = channel_named(message)
        return ModelUnavailableError(text, model=model, group=group, **common)
    return cls(text, **common)  # type: ignore[arg-type]


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date.

    Returns ``None`` when the header is absent or unreadable; never a negative delay.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


# --- streams ------------------------------------------------------------------------------


async def _lines(response: httpx.Response, route: str) -> AsyncIterator[str]:
    """The body's lines; a connection lost mid-stream is our ConnectionLostError (the
    reader of the frames sees it, not only the context that opened the stream)."""
    try:
        async for line in response.aiter_lines():
            yield line
    except httpx.HTTPError as exc:
        raise translate_transport_error(exc, route) from None


async def sse_payloads(response: httpx.Response, route: str) -> AsyncIterator[object]:
    """Decode ``data:`` events of a server-sent event stream until ``[DONE]`` or EOF.

    Comment lines (``: PING``) and other fields are skipped; multi-line data joins.
    """
    data_lines: list[str] = []
    async for line in _lines(response, route):
        if line == "":
            if data_lines:
                payload = "\n".join(data_lines)
                data_lines.clear()
                if payload.strip() == "[DONE]":
                    return
                try:
                    yield json.loads(payload)
                except ValueError:
                    raise ResponseFormatError(
                        f"stream frame is not JSON: {payload[:80]!r}", route=route
                    ) from None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data_lines.append(value[1:] if value.startswith(" ") else value)
    if data_lines:
        payload = "\n".join(data_lines)
        if payload.strip() != "[DONE]":
            try:
                yield json.loads(payload)
            except ValueError:
                raise ResponseFormatError("stream ended mid-frame", route=route) from None


# --- logs ---------------------------------------------------------------------------------


class _RedactingFilter(logging.Filter):
    """Masks secrets in log records: httpx logs every URL, and getCredits carries the key."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, ()
        return True


_LOG_FILTER = _RedactingFilter()


def guard_loggers() -> None:
    """Put the redacting filter on the HTTP stack's loggers (once)."""
    for name in ("httpx2", "httpcore2"):
        logger = logging.getLogger(name)
        if _LOG_FILTER not in logger.filters:
            logger.addFilter(_LOG_FILTER)
