"""Unit tests for batchgen.api.responses: every body shape protocol.md lists."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from batchgen.api.responses import (
    FailureReason,
    TaskInfo,
    TaskStatus,
    parse_chat_chunk,
    parse_chat_completion,
    parse_credits,
    parse_images,
    parse_model_status,
    parse_submission,
    parse_task,
    unwrap,
)
from batchgen.errors import BusinessError, ResponseFormatError, TaskNotFoundError

ROUTE = "POST /draw/result"
PNG_BYTES = b"\x89PNG\r\n\x1a\nnot-really-a-png"


def envelope(data: object, code: object = 0, msg: str = "success") -> dict[str, Any]:
    """The ``{code, msg, data}`` envelope around ``data``."""
    return {"code": code, "msg": msg, "data": data}


# --- submissions --------------------------------------------------------------------------


def test_flat_submission() -> None:
    """A flat async answer gives the task id, status running and its progress."""
    sub = parse_submission(
        {"id": "task_9f2c", "status": "running", "progress": 0}, route=ROUTE, request_id="r1"
    )
    assert sub.task_id == "task_9f2c"
    assert sub.status is TaskStatus.RUNNING
    assert sub.progress == 0
    assert sub.request_id == "r1"


def test_enveloped_submission() -> None:
    """The same answer inside {code: 0, msg, data} reads identically."""
    sub = parse_submission(
        envelope({"id": "task_1", "status": "running", "progress": 3}), route=ROUTE
    )
    assert (sub.task_id, sub.status, sub.progress) == ("task_1", TaskStatus.RUNNING, 3)


def test_nano_banana_submission_without_status() -> None:
    """The legacy answer {code 0, data: {id}} has no status and counts as running."""
    sub = parse_submission(envelope({"id": "task_nb"}), route=ROUTE)
    assert sub.task_id == "task_nb"
    assert sub.status is TaskStatus.RUNNING


@pytest.mark.parametrize("key", ["task_id", "taskId"])
def test_submission_id_aliases(key: str) -> None:
    """task_id and taskId are accepted in place of id."""
    assert parse_submission({key: "task_a"}, route=ROUTE).task_id == "task_a"


@pytest.mark.parametrize(
    "body",
    [{}, {"status": "running"}, {"id": 42}, {"id": ""}, envelope(None), envelope({"x": 1})],
)
def test_submission_without_id(body: dict[str, Any]) -> None:
    """An answer that carries no usable task id is a ResponseFormatError."""
    with pytest.raises(ResponseFormatError, match="no task id"):
        parse_submission(body, route=ROUTE)


@pytest.mark.parametrize("body", [[1, 2], "task_1", None, 3])
def test_non_object_body(body: object) -> None:
    """A body that is not a JSON object is a ResponseFormatError naming the route."""
    with pytest.raises(ResponseFormatError, match="not an object") as info:
        parse_submission(body, route=ROUTE)
    assert info.value.route == ROUTE


# --- business codes -------------------------------------------------------------------------


@pytest.mark.parametrize("code", [-22, "-22"])
def test_code_minus_22_is_task_not_found(code: object) -> None:
    """HTTP 200 with code -22 raises TaskNotFoundError carrying status 200 and the request id."""
    with pytest.raises(TaskNotFoundError) as info:
        parse_task(
            {"code": code, "msg": "result not exist", "data": None}, route=ROUTE, request_id="rq"
        )
    exc = info.value
    assert exc.code == "task_not_found"
    assert exc.status == 200
    assert exc.request_id == "rq"
    assert "result not exist" in str(exc)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"code": 1001, "msg": "余额不足", "data": None}, "余额不足"),
        (
            {"code": 1001, "msg": "", "data": None, "error": {"message": "insufficient"}},
            "insufficient",
        ),
        ({"code": 1001, "msg": "", "data": None, "message": "quota gone"}, "quota gone"),
        ({"code": 7, "data": None}, "business error code 7"),
    ],
)
def test_other_codes_are_business_errors(body: dict[str, Any], message: str) -> None:
    """Other non-zero codes raise BusinessError with msg, else error.message, else message."""
    with pytest.raises(BusinessError) as info:
        parse_submission(body, route=ROUTE)
    assert message in str(info.value)
    assert info.value.code == f"code_{body['code']}"
    assert info.value.status == 200


def test_business_error_with_only_message() -> None:
    """A body {code != 0, message} without msg or data is still a BusinessError."""
    with pytest.raises(BusinessError, match="quota gone"):
        parse_submission({"code": 1001, "message": "quota gone"}, route=ROUTE)


def test_error_object_on_http_200_is_business_error() -> None:
    """An OpenAI error envelope on HTTP 200 raises BusinessError with error.code as code."""
    with pytest.raises(BusinessError, match="no credits") as info:
        parse_submission(
            {"error": {"message": "no credits", "code": "insufficient_quota"}}, route=ROUTE
        )
    assert info.value.code == "insufficient_quota"


def test_success_false_is_business_error() -> None:
    """A dashboard body {success: false, message} raises BusinessError with that message."""
    with pytest.raises(BusinessError, match="not logged in"):
        unwrap({"success": False, "message": "not logged in"}, route=ROUTE)


@pytest.mark.parametrize("code", [0, "0", 200, "success"])
def test_success_codes_unwrap(code: object) -> None:
    """Every success spelling of code unwraps to the data object."""
    assert unwrap(envelope({"id": "t"}, code=code), route=ROUTE) == {"id": "t"}


def test_data_not_an_object() -> None:
    """An envelope whose data is not an object is a ResponseFormatError."""
    with pytest.raises(ResponseFormatError, match="data is list"):
        unwrap(envelope([1]), route=ROUTE)


# --- tasks ----------------------------------------------------------------------------------


def test_confirmed_result_shape() -> None:
    """The documented /draw/result body gives a succeeded task with its URL and content."""
    body = envelope(
        {
            "id": "task_1",
            "status": "succeeded",
            "progress": 100,
            "results": [{"url": "https://cdn.example/x.png", "content": "a cat"}],
            "failure_reason": "",
            "error": "",
        }
    )
    info = parse_task(body, route=ROUTE, request_id="req")
    assert info.succeeded
    assert info.status.terminal
    assert info.progress == 100
    assert info.urls == ("https://cdn.example/x.png",)
    assert info.results[0].content == "a cat"
    assert info.request_id == "req"
    assert info.reason is None


def test_flat_json_reply() -> None:
    """A replyType json answer (flat, no envelope) reads as the same task."""
    info = parse_task(
        {"id": "t", "status": "succeeded", "results": [{"url": "https://a/1.png"}]}, route=ROUTE
    )
    assert info.urls == ("https://a/1.png",)


def test_single_url_instead_of_results() -> None:
    """A single url on data (no results list) gives one result image."""
    info = parse_task(
        envelope({"id": "t", "status": "succeeded", "url": "https://a/1.png", "content": "c"}),
        route=ROUTE,
    )
    assert info.urls == ("https://a/1.png",)
    assert info.results[0].content == "c"


def test_list_valued_url() -> None:
    """A list-valued url gives one result per string, in order, skipping blanks."""
    info = parse_task(
        {"id": "t", "status": "succeeded", "url": ["https://a/1.png", "", "https://a/2.png"]},
        route=ROUTE,
    )
    assert info.urls == ("https://a/1.png", "https://a/2.png")


def test_empty_results_fall_back_to_url() -> None:
    """An empty results list next to a url uses the url."""
    info = parse_task(
        {"id": "t", "status": "succeeded", "results": [], "url": "https://a/1.png"}, route=ROUTE
    )
    assert info.urls == ("https://a/1.png",)


def test_results_as_strings_and_inline() -> None:
    """Result items may be bare URL strings or objects carrying b64_json bytes."""
    b64 = base64.b64encode(PNG_BYTES).decode()
    info = parse_task(
        {"id": "t", "status": "succeeded", "results": ["https://a/1.png", {"b64_json": b64}]},
        route=ROUTE,
    )
    assert info.urls == ("https://a/1.png",)
    assert info.results[1].data == PNG_BYTES
    assert info.results[1].url is None


def test_results_not_a_list() -> None:
    """A results value that is not a list is a ResponseFormatError."""
    with pytest.raises(ResponseFormatError, match="results is not a list"):
        parse_task({"id": "t", "status": "running", "results": {"url": "x"}}, route=ROUTE)


def test_succeeded_without_images() -> None:
    """A succeeded task with no result image at all is a ResponseFormatError."""
    with pytest.raises(ResponseFormatError, match="without any result image"):
        parse_task({"id": "t", "status": "succeeded", "results": []}, route=ROUTE)


def test_task_without_id() -> None:
    """A task body without an id is a ResponseFormatError."""
    with pytest.raises(ResponseFormatError, match="no id"):
        parse_task({"status": "running"}, route=ROUTE)


@pytest.mark.parametrize(
    ("spelling", "status"),
    [
        ("running", TaskStatus.RUNNING),
        ("queued", TaskStatus.RUNNING),
        ("in-progress", TaskStatus.RUNNING),
        ("succeeded", TaskStatus.SUCCEEDED),
        ("success", TaskStatus.SUCCEEDED),
        ("SUCCEEDED", TaskStatus.SUCCEEDED),
        (" Success ", TaskStatus.SUCCEEDED),
        ("failed", TaskStatus.FAILED),
        ("FAILED", TaskStatus.FAILED),
        ("violation", TaskStatus.VIOLATION),
    ],
)
def test_status_spellings(spelling: str, status: TaskStatus) -> None:
    """Every documented status spelling maps to its state, whatever the case."""
    assert TaskStatus.parse(spelling) is status


@pytest.mark.parametrize("value", ["exploded", "", 3, None])
def test_unknown_status(value: object) -> None:
    """An unknown spelling or a non-string status is a ResponseFormatError."""
    with pytest.raises(ResponseFormatError):
        TaskStatus.parse(value)


def test_unknown_status_in_a_task() -> None:
    """A task body with an unknown status spelling is a ResponseFormatError."""
    with pytest.raises(ResponseFormatError, match="unknown task status"):
        parse_task({"id": "t", "status": "teleported"}, route=ROUTE)


def test_missing_status_means_running() -> None:
    """A task body without status counts as running."""
    assert parse_task({"id": "t"}, route=ROUTE).status is TaskStatus.RUNNING


@pytest.mark.parametrize(
    ("raw", "expected"), [(0, 0), (37, 37), ("42", 42), (12.9, 12), (150, 100), (-5, 0), (None, 0)]
)
def test_running_progress_is_clamped(raw: object, expected: int) -> None:
    """A running task's progress is read as an integer clamped to 0..100."""
    assert parse_task({"id": "t", "status": "running", "progress": raw}, route=ROUTE).progress == (
        expected
    )


def test_terminal_progress_is_100() -> None:
    """A failed task reports progress 100 whatever the body says."""
    info = parse_task({"id": "t", "status": "failed", "progress": 40}, route=ROUTE)
    assert info.progress == 100


def test_terminal_flags() -> None:
    """Only running is non-terminal."""
    assert not TaskStatus.RUNNING.terminal
    assert all(s.terminal for s in (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.VIOLATION))


# --- failure reasons ------------------------------------------------------------------------


def test_failure_reason_final() -> None:
    """Moderation reasons are final; only error is worth resubmitting."""
    assert FailureReason.OUTPUT_MODERATION.final
    assert FailureReason.INPUT_MODERATION.final
    assert not FailureReason.ERROR.final


@pytest.mark.parametrize(
    ("status", "failure_reason", "expected"),
    [
        ("failed", "output_moderation", FailureReason.OUTPUT_MODERATION),
        ("failed", "input_moderation", FailureReason.INPUT_MODERATION),
        ("failed", "error", FailureReason.ERROR),
        ("failed", "", FailureReason.ERROR),
        ("failed", "something new", FailureReason.ERROR),
        ("violation", "", FailureReason.OUTPUT_MODERATION),
        ("violation", "input_moderation", FailureReason.INPUT_MODERATION),
        ("running", "", None),
    ],
)
def test_task_reason(status: str, failure_reason: str, expected: FailureReason | None) -> None:
    """TaskInfo.reason reads failure_reason; a bare violation is output moderation."""
    info = parse_task(
        {"id": "t", "status": status, "failure_reason": failure_reason, "error": "boom"},
        route=ROUTE,
    )
    assert info.reason is expected
    if status != "running":
        assert info.error == "boom"


def test_violation_is_final() -> None:
    """A violation ends the task, did not succeed, and must not be resubmitted."""
    info = TaskInfo(id="t", status=TaskStatus.VIOLATION)
    assert info.status.terminal
    assert not info.succeeded
    assert info.reason is not None
    assert info.reason.final


def test_error_falls_back_to_message() -> None:
    """A failed task without error text takes its message field."""
    info = parse_task({"id": "t", "status": "failed", "message": "upstream died"}, route=ROUTE)
    assert info.error == "upstream died"


# --- images/generations ---------------------------------------------------------------------


def test_images_with_url() -> None:
    """An images answer with url items gives those URLs, created and revised prompts."""
    result = parse_images(
        {
            "created": 1712345678,
            "data": [{"url": "https://a/1.png", "b64_json": "", "revised_prompt": "a cat"}],
        },
        route=ROUTE,
        request_id="rq",
    )
    assert result.created == 1712345678
    assert result.images[0].url == "https://a/1.png"
    assert result.images[0].data is None
    assert result.images[0].revised_prompt == "a cat"
    assert result.request_id == "rq"


@pytest.mark.parametrize("prefix", ["", "data:image/png;base64,"])
def test_images_with_b64_json(prefix: str) -> None:
    """A b64_json item (plain or as a data URL) decodes to the image bytes."""
    b64 = prefix + base64.b64encode(PNG_BYTES).decode()
    result = parse_images({"created": 1, "data": [{"b64_json": b64}]}, route=ROUTE)
    assert result.images[0].data == PNG_BYTES
    assert result.images[0].url is None


@pytest.mark.parametrize("bad", ["not base64!!", "abc", "%%%%"])
def test_images_with_invalid_b64(bad: str) -> None:
    """Invalid base64 in b64_json is a ResponseFormatError."""
    with pytest.raises(ResponseFormatError, match="not valid base64"):
        parse_images({"created": 1, "data": [{"b64_json": bad}]}, route=ROUTE)


def test_invalid_b64_in_task_results() -> None:
    """Invalid base64 inside a task's results is a ResponseFormatError too."""
    with pytest.raises(ResponseFormatError, match="not valid base64"):
        parse_task({"id": "t", "status": "succeeded", "results": [{"b64_json": "@@"}]}, route=ROUTE)


@pytest.mark.parametrize(
    "body",
    [
        {"created": 1, "data": [{"url": "", "b64_json": ""}]},
        {"created": 1, "data": ["https://a/1.png"]},
        {"created": 1, "data": {"url": "x"}},
        {"created": 1},
    ],
)
def test_images_unreadable(body: dict[str, Any]) -> None:
    """An images answer without a list of url/b64_json objects is a ResponseFormatError."""
    with pytest.raises(ResponseFormatError):
        parse_images(body, route=ROUTE)


def test_images_error_body() -> None:
    """An error envelope on the images route raises BusinessError, not a format error."""
    with pytest.raises(BusinessError, match="bad size"):
        parse_images({"error": {"message": "bad size", "code": "invalid_size"}}, route=ROUTE)


def test_images_created_not_int() -> None:
    """A non-integer created reads as 0."""
    assert parse_images({"created": "x", "data": [{"url": "u"}]}, route=ROUTE).created == 0


# --- credits and model status ---------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [(5000, 5000.0), (12.5, 12.5), ("7.25", 7.25)])
def test_credits(value: object, expected: float) -> None:
    """getCredits' {code 0, data: {credits}} reads as a float balance."""
    assert parse_credits(envelope({"credits": value}), route=ROUTE).credits == expected


@pytest.mark.parametrize("value", [None, True, "lots", [1]])
def test_credits_unreadable(value: object) -> None:
    """A missing, boolean or non-numeric credits value is a ResponseFormatError."""
    with pytest.raises(ResponseFormatError):
        parse_credits(envelope({"credits": value}), route=ROUTE)


@pytest.mark.parametrize("available", [True, False])
def test_model_status(available: bool) -> None:
    """getModelStatus' {code 0, data: {status, error}} reads as availability and error."""
    status = parse_model_status(
        envelope({"status": available, "error": "" if available else "no channel"}),
        model="nano-banana",
        route=ROUTE,
    )
    assert status.model == "nano-banana"
    assert status.available is available
    assert status.error == ("" if available else "no channel")


def test_model_status_not_boolean() -> None:
    """A non-boolean model status is a ResponseFormatError."""
    with pytest.raises(ResponseFormatError, match="not a boolean"):
        parse_model_status(envelope({"status": "ok"}), model="m", route=ROUTE)


# --- chat -----------------------------------------------------------------------------------


def test_chat_completion() -> None:
    """An OpenAI chat completion gives its id, model, content and finish reason."""
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gemini-3.1-pro-preview",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "你好"},
                "finish_reason": "stop",
            }
        ],
    }
    done = parse_chat_completion(body, route=ROUTE)
    assert (done.id, done.model, done.content, done.finish_reason) == (
        "chatcmpl-1",
        "gemini-3.1-pro-preview",
        "你好",
        "stop",
    )
    assert done.raw == body


@pytest.mark.parametrize("choices", [None, [], ["x"]])
def test_chat_completion_without_choices(choices: object) -> None:
    """A completion without a usable choices list is a ResponseFormatError."""
    with pytest.raises(ResponseFormatError, match="no choices"):
        parse_chat_completion({"id": "c", "choices": choices}, route=ROUTE)


def test_chat_chunk() -> None:
    """A chat.completion.chunk gives the delta text and finish reason."""
    chunk = parse_chat_chunk(
        {
            "object": "chat.completion.chunk",
            "choices": [{"delta": {"content": "Hel"}, "finish_reason": None}],
        },
        route=ROUTE,
    )
    assert (chunk.delta, chunk.finish_reason) == ("Hel", None)
    last = parse_chat_chunk({"choices": [{"delta": {}, "finish_reason": "stop"}]}, route=ROUTE)
    assert (last.delta, last.finish_reason) == ("", "stop")


def test_chat_chunk_error_frame() -> None:
    """An {error: {...}} chunk raises instead of reading as an empty delta."""
    with pytest.raises(BusinessError, match="upstream busy"):
        parse_chat_chunk({"error": {"message": "upstream busy", "code": "x"}}, route=ROUTE)
