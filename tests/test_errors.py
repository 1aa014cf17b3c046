"""Unit tests for batchgen.errors: the tree, the per-class defaults and redaction."""

from __future__ import annotations

import re
import traceback

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchgen import errors
from batchgen.api.messages import error_from_mapping
from batchgen.errors import (
    Accepted,
    AccessDeniedError,
    APIError,
    AuthenticationError,
    BadRequestError,
    BatchgenError,
    BusinessError,
    ConfigError,
    ConnectError,
    ConnectionLostError,
    DownloadError,
    DownloadTooLargeError,
    GenerationError,
    LeaseHeldError,
    LedgerError,
    ModelUnavailableError,
    NotAnImageError,
    PermissionDeniedError,
    PreflightError,
    QuotaExceededError,
    RateLimitError,
    RequestTimeoutError,
    ResponseFormatError,
    ResultExpiredError,
    SpecError,
    SpecIssue,
    TaskNotFoundError,
    TransportError,
    TruncatedDownloadError,
    UnsafeURLError,
    UpstreamError,
    UsageError,
    redact,
    register_secret,
)

#: A key shaped like the service's (``sk-`` + letters), caught by the pattern alone.
CANARY_KEY = "sk-canaryErrors0123456789abcdef"
#: A secret of another shape, masked only because it is registered.
CANARY_SESSION = "canary-session-QZ7XW2PTB9"

ALL_CLASSES: list[type[BatchgenError]] = [
    BatchgenError,
    UsageError,
    SpecError,
    ConfigError,
    PreflightError,
    LedgerError,
    LeaseHeldError,
    GenerationError,
    APIError,
    AuthenticationError,
    PermissionDeniedError,
    AccessDeniedError,
    QuotaExceededError,
    TaskNotFoundError,
    RateLimitError,
    ModelUnavailableError,
    UpstreamError,
    BadRequestError,
    BusinessError,
    ResponseFormatError,
    TransportError,
    ConnectError,
    RequestTimeoutError,
    ConnectionLostError,
    DownloadError,
    ResultExpiredError,
    UnsafeURLError,
    DownloadTooLargeError,
    TruncatedDownloadError,
    NotAnImageError,
]

# (class, direct parent, code, retryable, accepted, exit code), as the module documents.
DEFAULTS: list[tuple[type[BatchgenError], type[Exception], str, bool, Accepted, int]] = [
    (BatchgenError, Exception, "error", False, Accepted.NO, 1),
    (UsageError, BatchgenError, "usage", False, Accepted.NO, 2),
    (SpecError, BatchgenError, "invalid_spec", False, Accepted.NO, 2),
    (ConfigError, BatchgenError, "config", False, Accepted.NO, 3),
    (PreflightError, ConfigError, "preflight", False, Accepted.NO, 1),
    (LedgerError, BatchgenError, "ledger", False, Accepted.NO, 3),
    (LeaseHeldError, LedgerError, "lease_held", False, Accepted.NO, 4),
    (GenerationError, BatchgenError, "generation_failed", False, Accepted.NO, 1),
    (APIError, BatchgenError, "api_error", False, Accepted.NO, 1),
    (AuthenticationError, APIError, "invalid_api_key", False, Accepted.NO, 3),
    (PermissionDeniedError, APIError, "token_model_forbidden", False, Accepted.NO, 1),
    (AccessDeniedError, PermissionDeniedError, "access_denied", False, Accepted.NO, 3),
    (QuotaExceededError, APIError, "insufficient_user_quota", False, Accepted.NO, 1),
    (TaskNotFoundError, APIError, "task_not_found", False, Accepted.NO, 1),
    (RateLimitError, APIError, "rate_limit_exceeded", True, Accepted.NO, 1),
    (ModelUnavailableError, APIError, "model_not_found", True, Accepted.NO, 1),
    (UpstreamError, APIError, "upstream_error", True, Accepted.NO, 1),
    (BadRequestError, APIError, "bad_request", False, Accepted.NO, 1),
    (BusinessError, APIError, "business_error", False, Accepted.NO, 1),
    (ResponseFormatError, BatchgenError, "malformed_response", False, Accepted.UNKNOWN, 1),
    (TransportError, BatchgenError, "transport_error", True, Accepted.UNKNOWN, 1),
    (ConnectError, TransportError, "connect_error", True, Accepted.NO, 1),
    (RequestTimeoutError, TransportError, "timeout", True, Accepted.UNKNOWN, 1),
    (ConnectionLostError, TransportError, "connection_lost", True, Accepted.UNKNOWN, 1),
    (DownloadError, BatchgenError, "download_failed", True, Accepted.NO, 1),
    (ResultExpiredError, DownloadError, "url_expired", False, Accepted.NO, 1),
    (UnsafeURLError, DownloadError, "unsafe_url", False, Accepted.NO, 1),
    (DownloadTooLargeError, DownloadError, "too_large", False, Accepted.NO, 1),
    (TruncatedDownloadError, DownloadError, "truncated", True, Accepted.NO, 1),
    (NotAnImageError, DownloadError, "not_an_image", True, Accepted.NO, 1),
]


def build(cls: type[BatchgenError], secret: str) -> BatchgenError:
    """Build one instance of ``cls`` with ``secret`` in every text input it takes."""
    if cls is SpecError:
        return SpecError(
            [
                SpecIssue(f"{secret}.yaml", 1, 2, f"bad key {secret}"),
                SpecIssue("job.yaml", 3, 4, f"also {secret}"),
            ]
        )
    if issubclass(cls, RateLimitError):
        return cls(
            f"slow down {secret}",
            status=429,
            route=f"POST /x?k={secret}",
            request_id=f"req-{secret}",
            retry_after=3.0,
        )
    if issubclass(cls, APIError):
        return cls(f"refused {secret}", status=400, route=f"POST /x?k={secret}", request_id=secret)
    if issubclass(cls, ResponseFormatError | TransportError):
        return cls(f"odd body {secret}", route=f"POST /x?k={secret}")
    if issubclass(cls, DownloadError):
        return cls(f"cannot save {secret}", url=f"https://h.example/{secret}.png")
    return cls(f"failed with {secret}")


def test_exports_are_the_documented_tree() -> None:
    """Every class in the test table is exported, and every exported error class is listed."""
    exported = {
        name
        for name in errors.__all__
        if isinstance(getattr(errors, name), type)
        and issubclass(getattr(errors, name), BaseException)
    }
    assert exported == {cls.__name__ for cls in ALL_CLASSES}
    assert errors.__all__ == sorted(errors.__all__)


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_every_class_is_a_batchgen_error(cls: type[BatchgenError]) -> None:
    """Every error class batchgen exports derives from BatchgenError."""
    assert issubclass(cls, BatchgenError)


@pytest.mark.parametrize(
    ("cls", "parent", "code", "retryable", "accepted", "exit_code"),
    DEFAULTS,
    ids=[row[0].__name__ for row in DEFAULTS],
)
def test_class_defaults(
    cls: type[BatchgenError],
    parent: type[Exception],
    code: str,
    retryable: bool,
    accepted: Accepted,
    exit_code: int,
) -> None:
    """Each class has its documented direct parent, code, retryable, accepted and exit code."""
    assert cls.__bases__ == (parent,)
    exc = build(cls, "x")
    assert exc.code == code
    assert exc.retryable is retryable
    assert exc.accepted is accepted
    assert exc.exit_code == exit_code
    assert type(exc).exit_code == exit_code


def test_docstring_tree_matches_the_classes() -> None:
    """The tree drawn in the module docstring names each class under its real parent."""
    doc = (errors.__doc__ or "").partition("::")[2]
    stack: list[str] = []
    seen: dict[str, str | None] = {}
    for line in doc.splitlines():
        match = re.match(r"^[ │]*(?:[├└]── )?([A-Z][A-Za-z]+Error)\b", line)
        if match is None:
            continue
        depth = (line.index("──") - 1) // 4 if "──" in line else 0
        del stack[depth:]
        seen[match.group(1)] = stack[-1] if stack else None
        stack.append(match.group(1))
    assert set(seen) == {cls.__name__ for cls in ALL_CLASSES}
    for cls in ALL_CLASSES:
        expected = None if cls is BatchgenError else cls.__bases__[0].__name__
        assert seen[cls.__name__] == expected, cls.__name__


def test_overrides_replace_the_defaults() -> None:
    """Explicit code, retryable and accepted arguments win over the class defaults."""
    exc = UpstreamError("x", code="custom", retryable=False, accepted=Accepted.UNKNOWN)
    assert (exc.code, exc.retryable, exc.accepted) == ("custom", False, Accepted.UNKNOWN)
    timeout = RequestTimeoutError("before sending", accepted=Accepted.NO)
    assert timeout.accepted is Accepted.NO


def test_api_error_message_carries_route_status_and_request_id() -> None:
    """An APIError reads 'route HTTP status: message (request id …)' and keeps each part."""
    exc = PermissionDeniedError(
        "无权访问该模型", status=403, route="POST /api/generate", request_id="req-42"
    )
    assert str(exc) == "POST /api/generate HTTP 403: 无权访问该模型 (request id req-42)"
    assert (exc.status, exc.route, exc.request_id) == (403, "POST /api/generate", "req-42")
    assert exc.args == (str(exc),)
    assert repr(exc) == f"PermissionDeniedError({str(exc)!r}, code='token_model_forbidden')"
    assert str(APIError("bare")) == "bare"


def test_rate_limit_error_mentions_retry_after() -> None:
    """RateLimitError keeps retry_after and appends it to the message only when known."""
    with_delay = RateLimitError("busy", status=429, retry_after=7.0)
    assert with_delay.retry_after == 7.0
    assert str(with_delay) == "HTTP 429: busy (retry after 7s)"
    without = RateLimitError("busy", status=429)
    assert without.retry_after is None
    assert "retry after" not in str(without)


def test_route_prefix_of_response_format_and_transport_errors() -> None:
    """ResponseFormatError and TransportError prefix the route when one is given."""
    assert str(ResponseFormatError("no id", route="POST /draw/result")) == (
        "POST /draw/result: no id"
    )
    assert str(ConnectionLostError("gone", route="GET /x")) == "GET /x: gone"
    assert str(ConnectError("refused")) == "refused"


def test_spec_error_with_one_issue() -> None:
    """A SpecError with one error reads exactly as that issue's 'file:line:col: message'."""
    exc = SpecError([SpecIssue("job.yaml", 3, 7, "unknown model 'nano'")])
    assert str(exc) == "job.yaml:3:7: unknown model 'nano'"
    assert len(exc.issues) == 1


def test_spec_error_with_several_issues() -> None:
    """A SpecError with several errors counts them and lists one per line, in file order."""
    issues = [
        SpecIssue("job.yaml", 2, 1, "missing prompt"),
        SpecIssue("job.yaml", 5, 3, "deprecated key", severity="warning"),
        SpecIssue("job.yaml", 9, 5, "bad aspectRatio '7:5'"),
    ]
    exc = SpecError(issues)
    assert str(exc) == (
        "2 errors in the job spec:\n"
        "job.yaml:2:1: missing prompt\n"
        "job.yaml:9:5: bad aspectRatio '7:5'"
    )
    assert exc.issues == tuple(issues)
    assert str(issues[1]) == "job.yaml:5:3: warning: deprecated key"


def test_spec_error_ignores_warnings_when_counting() -> None:
    """One error plus warnings formats as the single error, with the warnings kept in issues."""
    issues = [
        SpecIssue("a.yaml", 1, 1, "note", severity="warning"),
        SpecIssue("a.yaml", 2, 1, "broken"),
    ]
    exc = SpecError(issues)
    assert str(exc) == "a.yaml:2:1: broken"
    assert len(exc.issues) == 2


def test_redact_masks_sk_tokens() -> None:
    """Any 'sk-' token of six or more key characters is masked; shorter ones are left."""
    assert redact(f"key {CANARY_KEY} failed") == "key sk-*** failed"
    assert redact("Bearer sk-abcdef, again sk-ABC_12-xyz.") == "Bearer sk-***, again sk-***."
    assert redact("sk-abc is too short") == "sk-abc is too short"


def test_redact_masks_registered_secrets() -> None:
    """A registered secret of any shape is masked wherever it appears."""
    register_secret(CANARY_SESSION)
    assert redact(f"cookie session={CANARY_SESSION}; x={CANARY_SESSION}") == (
        "cookie session=sk-***; x=sk-***"
    )


def test_register_secret_ignores_tiny_values() -> None:
    """Values shorter than four characters are not registered, so text stays readable."""
    register_secret("ab")
    assert redact("a cab ab") == "a cab ab"


def test_longer_secret_masked_before_its_prefix() -> None:
    """When one secret contains another, the longer one is masked whole."""
    register_secret("canary-nested-AAAA")
    register_secret("canary-nested-AAAA-BBBB")
    assert redact("x canary-nested-AAAA-BBBB y") == "x sk-*** y"


@given(prefix=st.text(max_size=30), suffix=st.text(max_size=30))
def test_redact_property(prefix: str, suffix: str) -> None:
    """Whatever surrounds them, a registered secret and an sk- key never survive redact."""
    register_secret(CANARY_SESSION)
    out = redact(f"{prefix}{CANARY_SESSION}{suffix}{CANARY_KEY}{prefix}")
    assert CANARY_SESSION not in out
    assert CANARY_KEY not in out


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("secret", [CANARY_KEY, CANARY_SESSION], ids=["key", "session"])
def test_no_class_shows_a_secret(cls: type[BatchgenError], secret: str) -> None:
    """str, repr, args and the traceback of every class built from a secret never show it."""
    register_secret(CANARY_SESSION)
    exc = build(cls, secret)
    try:
        raise exc
    except BatchgenError as caught:
        rendered = "".join(traceback.format_exception(caught))
    for text in (str(exc), repr(exc), repr(exc.args), rendered, exc.message):
        assert secret not in text
    if isinstance(exc, DownloadError):
        assert secret not in exc.url


def test_code_argument_is_redacted() -> None:
    """A secret in the code argument (e.g. echoed in error.code) does not reach repr."""
    exc = BadRequestError("refused", status=400, code=f"bad_key_{CANARY_KEY}")
    assert CANARY_KEY not in repr(exc)
    assert CANARY_KEY not in exc.code


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"msg": "余额不足", "error": {"message": "e"}, "message": "m"}, "余额不足"),
        ({"msg": "", "error": {"message": "from error"}, "message": "m"}, "from error"),
        ({"error": "plain error string"}, "plain error string"),
        ({"error": {"message": ""}, "message": "from message"}, "from message"),
        ({"code": 5}, ""),
    ],
)
def test_error_from_mapping_order(body: dict[str, object], expected: str) -> None:
    """The human message is read from msg, then error.message, then message."""
    assert error_from_mapping(body) == expected
