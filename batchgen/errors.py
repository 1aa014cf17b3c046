"""The one exception tree of batchgen.

Every error batchgen raises derives from :class:`BatchgenError`. Each error knows
whether retrying can help (``retryable``) and whether the service may have accepted,
and charged, the request that failed (``accepted``); the runner's policy reads those
two flags and the error's ``code``, nothing else. Messages are written by the errors
themselves from their arguments, and never contain a secret: everything that reaches
an exception passes through :func:`redact`.

::

    BatchgenError
    ├── UsageError                 bad command-line usage                      (exit 2)
    ├── SpecError                  the job spec is invalid; .issues lists all  (exit 2)
    ├── ConfigError                missing key, bad base URL, unusable folder  (exit 3)
    │   └── PreflightError         the service says the job cannot run as planned (exit 1)
    ├── LedgerError                the ledger cannot be opened or is foreign   (exit 3)
    │   └── LeaseHeldError         another run holds the job's ledger          (exit 4)
    ├── GenerationError            a generated axis did not get its values     (exit 1)
    ├── APIError                   the service answered with an error          (accepted: no)
    │   ├── AuthenticationError    401, any code: invalid, expired or used-up key (exit 3)
    │   ├── PermissionDeniedError  403 for one model (token_model_forbidden, or no code)
    │   │   └── AccessDeniedError  403 access_denied: not from this IP            (exit 3)
    │   ├── QuotaExceededError     403 insufficient_user_quota / pre_consume_token_quota_failed
    │   ├── TaskNotFoundError      404 task_not_found, or HTTP 200 with code -22
    │   ├── RateLimitError         429; .retry_after, .limit (the limit the message states)
    │   ├── ModelUnavailableError  503 model_not_found (no channel for the model)
    │   ├── UpstreamError          500, 502 and other 5xx upstream_error
    │   ├── BadRequestError        any other 4xx (400 model_price_error among them)
    │   └── BusinessError          HTTP 200 with code != 0 (e.g. no credits)
    ├── ResponseFormatError        a 2xx answer batchgen cannot read           (accepted: unknown)
    ├── TransportError             no usable answer arrived
    │   ├── ConnectError           the request never reached the service       (accepted: no)
    │   ├── RequestTimeoutError    connect/pool timeout: no; read timeout: unknown
    │   └── ConnectionLostError    the connection died after the request left  (accepted: unknown)
    └── DownloadError              a result image could not be saved
        ├── ResultExpiredError     the result URL answers 404/410 (it expired)
        ├── UnsafeURLError         scheme, host or redirect refused
        ├── DownloadTooLargeError  the body passed the size cap
        ├── TruncatedDownloadError the body ended before its declared length
        └── NotAnImageError        the bytes do not decode as an image
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from batchgen.i18n import _
from batchgen.limits import StatedLimit
from batchgen.redaction import redact, register_secret

__all__ = [
    "APIError",
    "Accepted",
    "AccessDeniedError",
    "AuthenticationError",
    "BadRequestError",
    "BatchgenError",
    "BusinessError",
    "ConfigError",
    "ConnectError",
    "ConnectionLostError",
    "DownloadError",
    "DownloadTooLargeError",
    "GenerationError",
    "LeaseHeldError",
    "LedgerError",
    "ModelUnavailableError",
    "NotAnImageError",
    "PermissionDeniedError",
    "PreflightError",
    "QuotaExceededError",
    "RateLimitError",
    "RequestTimeoutError",
    "ResponseFormatError",
    "ResultExpiredError",
    "SpecError",
    "SpecIssue",
    "StatedLimit",
    "TaskNotFoundError",
    "TransportError",
    "TruncatedDownloadError",
    "UnsafeURLError",
    "UpstreamError",
    "UsageError",
    "leaf_error",
    "redact",
    "register_secret",
]


class Accepted(enum.Enum):
    """Whether the service may have accepted (and charged) a failed request."""

    NO = "no"
    YES = "yes"
    UNKNOWN = "unknown"


# --- the tree -------------------------------------------------------------------------


class BatchgenError(Exception):
    """Base of every batchgen error.

    ``code`` is a short machine-readable reason (the service's error code where there
    is one), ``retryable`` says whether trying again can help, ``accepted`` whether
    the service may have taken (and charged) the request, ``exit_code`` what the CLI
    returns when this error ends a command.
    """

    default_code: ClassVar[str] = "error"
    retryable_default: ClassVar[bool] = False
    accepted_default: ClassVar[Accepted] = Accepted.NO
    exit_code: ClassVar[int] = 1

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retryable: bool | None = None,
        accepted: Accepted | None = None,
    ) -> None:
        self.message = redact(message)
        self.code = redact(code)[:100] if code else self.default_code
        self.retryable = self.retryable_default if retryable is None else retryable
        self.accepted = self.accepted_default if accepted is None else accepted
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r})"


class UsageError(BatchgenError):
    """The command line asks for something that cannot be done."""

    default_code = "usage"
    exit_code = 2


@dataclass(frozen=True, slots=True)
class SpecIssue:
    """One problem found in a job spec, located at a YAML node."""

    file: str
    line: int
    column: int
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        prefix = "" if self.severity == "error" else _("warning: ")
        return f"{self.file}:{self.line}:{self.column}: {prefix}{redact(self.message)}"


class SpecError(BatchgenError):
    """The job spec cannot be used; ``issues`` holds every problem found, in file order."""

    default_code = "invalid_spec"
    exit_code = 2

    def __init__(self, issues: Iterable[SpecIssue]) -> None:
        self.issues = tuple(issues)
        errors = [i for i in self.issues if i.severity == "error"]
        if len(errors) == 1:
            message = str(errors[0])
        else:
            head = _("{count} errors in the job spec:").format(count=len(errors))
            message = head + "\n" + "\n".join(str(i) for i in errors)
        super().__init__(message)


class ConfigError(BatchgenError):
    """The environment or the options make the command impossible (no key, bad URL, ...)."""

    default_code = "config"
    exit_code = 3


class PreflightError(ConfigError):
    """The service says, before anything is paid, that the job cannot run as planned
    (a model of the spec is not available to this key)."""

    default_code = "preflight"
    exit_code = 1


class LedgerError(BatchgenError):
    """The ledger cannot be opened, migrated or written."""

    default_code = "ledger"
    exit_code = 3


class LeaseHeldError(LedgerError):
    """Another run holds the job's ledger (``holder`` names it): nothing was changed."""

    default_code = "lease_held"
    exit_code = 4

    def __init__(self, message: str, *, holder: object = None) -> None:
        self.holder = holder
        super().__init__(message)


class GenerationError(BatchgenError):
    """A generated axis did not get its values: too few distinct ones after the bounded
    requests, the budget, or a pause longer than allowed. ``axis`` names it; answers
    already paid for stay in the ledger and are reused by the next lock."""

    default_code = "generation_failed"

    def __init__(self, message: str, *, axis: str = "", **kw: object) -> None:
        self.axis = axis
        super().__init__(message, **kw)  # type: ignore[arg-type]


# --- errors answered by the service ---------------------------------------------------


class APIError(BatchgenError):
    """The service answered, and the answer is an error.

    An answer is a refusal: the request was not accepted, so it was not charged.
    """

    default_code = "api_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        route: str = "",
        request_id: str | None = None,
        retryable: bool | None = None,
        accepted: Accepted | None = None,
    ) -> None:
        self.status = status
        self.route = route
        self.request_id = request_id
        parts = []
        if route:
            parts.append(route)
        if status is not None:
            parts.append(f"HTTP {status}")
        head = " ".join(parts)
        detail = f"{head}: {message}" if head else message
        if request_id and request_id not in message:  # the gateway writes it in its text
            detail += f" (request id {request_id})"
        super().__init__(detail, code=code, retryable=retryable, accepted=accepted)


class AuthenticationError(APIError):
    """401: the key is wrong, expired or revoked. Nothing else will work."""

    default_code = "invalid_api_key"
    exit_code = 3


class PermissionDeniedError(APIError):
    """403: the key may not use this model (``model``, when the answer names it)."""

    default_code = "token_model_forbidden"

    def __init__(self, message: str, *, model: str | None = None, **kw: object) -> None:
        self.model = model
        super().__init__(message, **kw)  # type: ignore[arg-type]


class AccessDeniedError(PermissionDeniedError):
    """403 ``access_denied``: the key may not be used from here (its IP allow-list).

    Not about one model: nothing this key sends from this machine will be accepted.
    """

    default_code = "access_denied"
    exit_code = 3


class QuotaExceededError(APIError):
    """403 ``insufficient_user_quota`` or ``pre_consume_token_quota_failed``: no credit.

    The account's balance (or the key's own quota) cannot pay for the request. Nothing
    was charged; nothing sent later will be accepted until someone tops it up.
    """

    default_code = "insufficient_user_quota"


class TaskNotFoundError(APIError):
    """The service does not know the task id (404 ``task_not_found`` or code -22)."""

    default_code = "task_not_found"


class RateLimitError(APIError):
    """429: too many requests.

    ``retry_after`` is the server's delay in seconds, if it sent one; ``limit`` the
    limit its message states, if it states one; ``empty`` says the answer had no body;
    ``server`` is the gateway's version header (``X-New-Api-Version``), if any.
    """

    default_code = "rate_limit_exceeded"
    retryable_default = True

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        limit: StatedLimit | None = None,
        empty: bool = False,
        server: str | None = None,
        **kw: object,
    ) -> None:
        self.retry_after = retry_after
        self.limit = limit
        self.empty = empty
        self.server = server
        if retry_after is not None:
            message = f"{message} (retry after {retry_after:g}s)"
        super().__init__(message, **kw)  # type: ignore[arg-type]


class ModelUnavailableError(APIError):
    """503 ``model_not_found``: no channel currently serves the model (``model`` in the
    group ``group``, when the answer names them)."""

    default_code = "model_not_found"
    retryable_default = True

    def __init__(
        self, message: str, *, model: str | None = None, group: str | None = None, **kw: object
    ) -> None:
        self.model = model
        self.group = group
        super().__init__(message, **kw)  # type: ignore[arg-type]


class UpstreamError(APIError):
    """500/502 (or another 5xx): the service or its upstream failed."""

    default_code = "upstream_error"
    retryable_default = True


class BadRequestError(APIError):
    """Any other 4xx: the request itself is wrong; retrying will not help."""

    default_code = "bad_request"


class BusinessError(APIError):
    """HTTP 200 whose body says ``code != 0``, e.g. insufficient credits."""

    default_code = "business_error"


class ResponseFormatError(BatchgenError):
    """A 2xx answer that batchgen cannot read. The service may have acted on the request."""

    default_code = "malformed_response"
    accepted_default = Accepted.UNKNOWN

    def __init__(self, message: str, *, route: str = "", **kw: object) -> None:
        self.route = route
        super().__init__(f"{route}: {message}" if route else message, **kw)  # type: ignore[arg-type]


# --- no answer --------------------------------------------------------------------------


class TransportError(BatchgenError):
    """No usable answer arrived. ``accepted`` tells whether the request left."""

    default_code = "transport_error"
    retryable_default = True
    accepted_default = Accepted.UNKNOWN

    def __init__(self, message: str, *, route: str = "", **kw: object) -> None:
        self.route = route
        super().__init__(f"{route}: {message}" if route else message, **kw)  # type: ignore[arg-type]


class ConnectError(TransportError):
    """The connection could not be made: the request never reached the service."""

    default_code = "connect_error"
    accepted_default = Accepted.NO


class RequestTimeoutError(TransportError):
    """A timeout fired. Before sending (connect, pool) it is a refusal; after, unknown."""

    default_code = "timeout"


class ConnectionLostError(TransportError):
    """The connection closed after the request was sent and before the answer was read."""

    default_code = "connection_lost"


# --- downloads --------------------------------------------------------------------------


class DownloadError(BatchgenError):
    """A result image could not be fetched or saved. Downloads are never charged."""

    default_code = "download_failed"
    retryable_default = True

    def __init__(self, message: str, *, url: str = "", **kw: object) -> None:
        self.url = redact(url)
        super().__init__(message, **kw)  # type: ignore[arg-type]


class ResultExpiredError(DownloadError):
    """The result URL no longer serves the image (it expires about 2 hours after)."""

    default_code = "url_expired"
    retryable_default = False


class UnsafeURLError(DownloadError):
    """The result URL (or a redirect) points where batchgen refuses to go."""

    default_code = "unsafe_url"
    retryable_default = False


class DownloadTooLargeError(DownloadError):
    """The image is larger than the size cap."""

    default_code = "too_large"
    retryable_default = False


class TruncatedDownloadError(DownloadError):
    """The body ended before the length the server declared."""

    default_code = "truncated"


class NotAnImageError(DownloadError):
    """The downloaded bytes are not an image Pillow can decode."""

    default_code = "not_an_image"


#: Codes of failed tasks whose images still exist at the service (a download failed
#: or the disk was full): ``retry`` fetches them again instead of paying again.
REFETCHABLE_CODES: frozenset[str] = frozenset(
    {"download_failed", "truncated", "not_an_image", "disk_full"}
)


def leaf_error(exc: BaseException) -> BaseException:
    """The error to report from an exception group raised by a task group.

    Prefers the first BatchgenError among the leaves, then the first leaf that is not
    a cancellation; returns ``exc`` itself when it is not a group.
    """
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    leaves: list[BaseException] = []
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop(0)
        if isinstance(current, BaseExceptionGroup):
            stack[:0] = list(current.exceptions)
        else:
            leaves.append(current)
    for leaf in leaves:
        if isinstance(leaf, BatchgenError):
            return leaf
    for leaf in leaves:
        if (
            not isinstance(leaf, (KeyboardInterrupt, SystemExit))
            and "Cancel" not in type(leaf).__name__
        ):
            return leaf
    return leaves[0] if leaves else exc
