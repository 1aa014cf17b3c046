"""The shape of a job spec (version 1) as pydantic models.

These models check structure and types only (unknown keys, wrong types, ranges); the
meaning (placeholders, files, model families, matrix size) is checked by
:mod:`batchgen.spec.resolve` and :mod:`batchgen.spec.checks`. They are also the single
source of the JSON Schema that editors use, so every field carries a description.
:func:`structure_issues` turns pydantic's errors into issues at YAML positions.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    JsonValue,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
)
from pydantic_core import ErrorDetails

from batchgen.errors import SpecIssue
from batchgen.i18n import N_, _
from batchgen.spec.lock import GeneratedAxisModel, GenerateModel
from batchgen.spec.yamlsrc import NodePath, YamlDocument

__all__ = [
    "DEFAULT_LAYOUT",
    "ENDPOINTS",
    "ApiModel",
    "Limits",
    "MatrixModel",
    "RowSourceModel",
    "SpecModel",
    "did_you_mean",
    "structure_issues",
]

#: The output path template used when a spec sets no ``layout``.
DEFAULT_LAYOUT = "{model}/{aspect_ratio}/{prompt}-{key8}.png"
#: Accepted values of ``api.endpoint``.
ENDPOINTS = ("generate", "nano-banana", "draw-completions", "images")


def did_you_mean(word: str, choices: Iterable[str], *, cutoff: float = 0.6) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return _("; did you mean {choice!r}?").format(choice=close[0]) if close else ""


_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _scalar_kind(value: Any) -> str | None:
    # bool first: it is an int subclass.
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return None


#: A string, number or boolean; becomes a string when used as a variable.
Scalar = Annotated[
    Annotated[StrictStr, Tag("str")]
    | Annotated[StrictInt, Tag("int")]
    | Annotated[StrictFloat, Tag("float")]
    | Annotated[StrictBool, Tag("bool")],
    Discriminator(
        _scalar_kind,
        custom_error_type="scalar_type",
        custom_error_message="should be a string, number or boolean",
    ),
]


def _item_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return "row"
    if isinstance(value, list):
        return "image-set"
    return "scalar" if _scalar_kind(value) else None


AxisItem = Annotated[
    Annotated[Scalar, Tag("scalar")]
    | Annotated[list[StrictStr], Tag("image-set")]
    | Annotated[dict[str, Scalar], Tag("row")],
    Discriminator(
        _item_kind,
        custom_error_type="axis_value_type",
        custom_error_message=(
            "should be a string or number, a mapping of variables (one row), "
            "or a list of images (only in the images axis)"
        ),
    ),
]


class RowSourceModel(BaseModel):
    """Axis values read from a file: ``.txt`` (one value per line), ``.csv`` or ``.jsonl``
    (one row per line; each column becomes a variable)."""

    model_config = _STRICT

    from_: StrictStr = Field(
        alias="from",
        description="Path of the row file, relative to the spec's folder.",
    )
    format: Literal["txt", "csv", "jsonl"] | None = Field(
        default=None,
        description="File format; by default taken from the extension (.txt, .csv, .tsv, .jsonl).",
    )
    delimiter: StrictStr | None = Field(
        default=None,
        min_length=1,
        max_length=1,
        description="CSV field separator (default ',' for .csv, tab for .tsv).",
    )


def _axis_kind(value: Any) -> str | None:
    if isinstance(value, list):
        return "values"
    if isinstance(value, dict):
        return "generate" if "generate" in value else "file"
    return None


AxisDef = Annotated[
    Annotated[list[AxisItem], Tag("values")]
    | Annotated[RowSourceModel, Tag("file")]
    | Annotated[GeneratedAxisModel, Tag("generate")],
    Discriminator(
        _axis_kind,
        custom_error_type="axis_type",
        custom_error_message="should be a list of values ([a, b]), a file ({from: rows.csv})"
        " or generated values ({generate: {model, count, instruction}})",
    ),
]

IncludeValue = Annotated[
    Annotated[Scalar, Tag("scalar")] | Annotated[list[StrictStr], Tag("image-set")],
    Discriminator(
        lambda v: "image-set" if isinstance(v, list) else ("scalar" if _scalar_kind(v) else None),
        custom_error_type="include_value_type",
        custom_error_message="should be a string or number (or a list of images for 'images')",
    ),
]


class MatrixModel(BaseModel):
    """Named axes crossed into combinations, plus GitHub-Actions-style ``include`` and
    ``exclude``. ``model``, ``aspect_ratio``, ``image_size``, ``prompt`` and ``images``
    axes set request fields; any other axis is a template variable."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    include: list[dict[str, IncludeValue]] = Field(
        default_factory=list,
        description=(
            "Entries added to every combination whose original values they do not change; "
            "an entry that fits no combination becomes a combination of its own."
        ),
    )
    exclude: list[dict[str, Scalar]] = Field(
        default_factory=list,
        description="Combinations to drop (applied before include); partial entries drop "
        "every combination they match.",
    )
    __pydantic_extra__: dict[str, AxisDef] = Field(init=False)


class ApiModel(BaseModel):
    """Which CobabaAi route to call. The API key is never written here: it comes only
    from the COBABA_API_KEY environment variable."""

    model_config = _STRICT

    endpoint: Literal["generate", "nano-banana", "draw-completions", "images"] = Field(
        default="generate",
        description=(
            "generate: POST /v1/api/generate (async, default); nano-banana: "
            "POST /v1/draw/nano-banana; draw-completions: POST /v1/draw/completions "
            "(gpt-image-2); images: POST /v1/images/generations (OpenAI-compatible)."
        ),
    )
    base_url: StrictStr | None = Field(
        default=None,
        description="Service URL (default https://cobabaai.com/v1); COBABA_BASE_URL and "
        "--base-url override it.",
    )
    reply: Literal["auto", "async", "stream"] = Field(
        default="auto",
        description=(
            "How the generate route answers. async: a task id at once, then polls; "
            "stream: progress frames on one connection, one request per image (no polls); "
            "auto (default): async, switching to stream once the service shows that it "
            "counts polls against its rate limit."
        ),
    )


class Limits(BaseModel):
    """Rate, retry, time and size limits of a run. Times are in seconds."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

    concurrency: StrictInt = Field(default=8, ge=1, le=1024, description="Tasks in flight at once.")
    requests_per_minute: float | None = Field(
        default=None,
        gt=0,
        description="Submissions per minute; unset: the runner discovers the limit.",
    )
    burst: StrictInt | None = Field(
        default=None, ge=1, description="Requests allowed at once before the rate applies."
    )
    max_attempts: StrictInt = Field(
        default=5, ge=1, le=100, description="Tries per task before it is marked failed."
    )
    submit_timeout: float = Field(default=60.0, gt=0, description="Timeout of one submission.")
    poll_timeout: float = Field(default=30.0, gt=0, description="Timeout of one status poll.")
    download_timeout: float = Field(
        default=120.0, gt=0, description="Timeout of one image download."
    )
    task_timeout: float = Field(
        default=3600.0, gt=0, description="Give up polling a task after this long."
    )
    max_tasks: StrictInt = Field(
        default=10_000,
        ge=1,
        description="Refuse a matrix that expands to more tasks than this (a typo guard).",
    )
    budget: float | None = Field(
        default=None,
        ge=0,
        description="Maximum total cost of the run, in the price currency; the run stops "
        "before spending more.",
    )
    resubmit_unknown: StrictBool = Field(
        default=False,
        description="Resubmit a task whose submission may have reached the service "
        "(risking a double charge) instead of marking it for review.",
    )
    max_image_bytes: StrictInt = Field(
        default=64 * 1024 * 1024, ge=1, description="Largest result image accepted, in bytes."
    )
    max_retry_after: float = Field(
        default=600.0,
        gt=0,
        description="A longer Retry-After parks the affected tasks instead of waiting.",
    )


class SpecModel(BaseModel):
    """A batchgen job spec, version 1: one prompt template crossed over a matrix of
    models, aspect ratios, sizes and variables."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        title="batchgen job spec (version 1)",
    )

    version: Literal[1] = Field(description="Spec format version; must be 1.")
    name: StrictStr | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Job name (default: the spec file's name without extension).",
    )
    description: StrictStr | None = Field(default=None, description="Free text for people.")
    output: StrictStr | None = Field(
        default=None,
        min_length=1,
        description="Output folder; relative paths resolve against the spec's folder "
        "(default: out/<name>).",
    )
    layout: StrictStr = Field(
        default=DEFAULT_LAYOUT,
        min_length=1,
        description="File path template under output. Fields: {model} {aspect_ratio} "
        "{image_size} {variant} {key} {key8} {prompt} {index} and every matrix variable; "
        "ends in .png or has no extension.",
    )
    model: StrictStr | None = Field(
        default=None, min_length=1, description="Default model (a model axis overrides it)."
    )
    aspect_ratio: StrictStr = Field(
        default="auto", min_length=1, description="Default aspect ratio, e.g. 1:1, 16:9, auto."
    )
    image_size: StrictStr = Field(
        default="1K", min_length=1, description="Default image size: 1K, 2K or 4K."
    )
    prompt: StrictStr | None = Field(
        default=None,
        description="Prompt template with {variable} placeholders ({{ and }} for braces).",
    )
    images: list[StrictStr] = Field(
        default_factory=list,
        description="Reference images for every task: local files (relative to the spec) "
        "or http(s) URLs. An images axis or include entry replaces them.",
    )
    api: ApiModel = Field(default_factory=ApiModel, description="The route to call.")
    matrix: MatrixModel = Field(
        default_factory=MatrixModel, description="Axes crossed into combinations."
    )
    repeat: StrictInt = Field(
        default=1,
        ge=1,
        le=10_000,
        description="Variants of each combination: each gets its own task and key "
        "(variant 0..repeat-1).",
    )
    params: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="Extra request fields sent with every task; string values are templates.",
    )
    model_params: dict[str, dict[str, JsonValue]] = Field(
        default_factory=dict,
        description="Extra request fields per model, merged over params "
        "(e.g. gpt-image-2: {quality: high}).",
    )
    limits: Limits = Field(default_factory=Limits, description="Rate, retry and size limits.")
    prices: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict,
        description="Cost per image by model, merged over the built-in price list.",
    )
    currency: StrictStr = Field(
        default="CNY", min_length=1, description="Currency of prices and budget (display only)."
    )
    embed: Literal["none", "parameters"] = Field(
        default="none",
        description="parameters: write the prompt, model, ratio, size, variables and key into"
        " each saved image (PNG text chunks 'parameters' and 'batchgen'; EXIF and XMP in JPEG"
        " and WebP). none (default): save the service's bytes unchanged.",
    )


# --- structure errors mapped to YAML positions -------------------------------------------


def _data_path(data: object, loc: tuple[int | str, ...]) -> NodePath:
    # Pydantic's loc mixes real keys with union tags ('values', 'str', ...): keep the
    # elements that exist in the data, in order.
    path: list[str | int] = []
    current = data
    for element in loc:
        in_dict = isinstance(current, dict) and isinstance(element, str) and element in current
        in_list = isinstance(current, list) and isinstance(element, int) and element < len(current)
        if not (in_dict or in_list):
            continue
        current = current[element]  # type: ignore[index]  # checked just above
        path.append(element)
    return tuple(path)


def _allowed_keys(parent: NodePath) -> tuple[str, ...]:
    model: type[SpecModel | ApiModel | Limits | RowSourceModel | GenerateModel] | None = None
    if parent == ():
        model = SpecModel
    elif parent == ("api",):
        model = ApiModel
    elif parent == ("limits",):
        model = Limits
    elif len(parent) == 2 and parent[0] == "matrix":
        model = RowSourceModel
    elif len(parent) == 3 and parent[0] == "matrix" and parent[2] == "generate":
        model = GenerateModel
    if model is None:
        return ()
    return tuple(field.alias or name for name, field in model.model_fields.items())


def _unknown_key_message(key: str, parent: NodePath) -> str:
    if parent and parent[0] == "matrix" and len(parent) == 2:
        message = _("unknown key {key!r} in a row file axis").format(key=key)
    else:
        message = _("unknown key {key!r}").format(key=key)
    hint = ""
    if parent == ():
        # A nested key written at the top (concurrency: 4) is a common slip.
        for section in ("limits", "api"):
            if key in _allowed_keys((section,)):
                hint = _("; did you mean {choice!r}?").format(choice=f"{section}.{key}")
    return message + (hint or did_you_mean(key, _allowed_keys(parent)))


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return str(value)
    return "a list" if isinstance(value, list) else "a mapping"


_MESSAGES = {
    "string_type": N_("should be a string"),
    "int_type": N_("should be a whole number"),
    "float_type": N_("should be a number"),
    "bool_type": N_("should be true or false"),
    "list_type": N_("should be a list"),
    "dict_type": N_("should be a mapping"),
    "model_type": N_("should be a mapping"),
    "model_attributes_type": N_("should be a mapping"),
    "finite_number": N_("should be a finite number"),
}


def _show(path: NodePath) -> str:
    out = ""
    for element in path:
        out += f"[{element}]" if isinstance(element, int) else ("." if out else "") + element
    return out or "spec"


def structure_issues(
    doc: YamlDocument, errors: list[ErrorDetails], skip: list[NodePath]
) -> list[SpecIssue]:
    """Turn pydantic's errors into issues at their YAML nodes, in user terms.

    Unknown keys get a "did you mean" suggestion (``concurrency`` at the top level
    suggests ``limits.concurrency``); union tags in pydantic's locations are dropped;
    errors under a path in ``skip`` (refused secrets) are left out so that their
    values are never echoed.
    """
    issues: list[SpecIssue] = []
    for error in errors:
        kind, loc = error["type"], error["loc"]
        path = _data_path(doc.data, loc)
        if any(path[: len(s)] == s for s in skip):
            continue  # already refused, and its value must not be echoed
        ctx = error.get("ctx", {})
        if kind == "extra_forbidden":
            issues.append(
                doc.issue(path, _unknown_key_message(str(path[-1]), path[:-1]), at_key=True)
            )
            continue
        if kind == "missing":
            if loc == ("version",):
                message = _("missing key 'version' (add `version: 1`)")
            elif path:
                message = _("missing key {key!r} in {where}").format(key=loc[-1], where=_show(path))
            else:
                message = _("missing key {key!r}").format(key=loc[-1])
            issues.append(doc.issue(path, message))
            continue
        if kind == "literal_error" and path == ("version",):
            message = _("unsupported spec version {value}: batchgen reads version 1")
            issues.append(doc.issue(path, message.format(value=_describe(error["input"]))))
            continue
        if kind in _MESSAGES:
            text = _(_MESSAGES[kind])
        elif kind == "greater_than_equal":
            text = _("should be at least {value}").format(value=_describe(ctx["ge"]))
        elif kind == "greater_than":
            text = _("should be greater than {value}").format(value=_describe(ctx["gt"]))
        elif kind == "less_than_equal":
            text = _("should be at most {value}").format(value=_describe(ctx["le"]))
        elif kind == "string_too_short":
            text = _("should not be empty")
        elif kind == "literal_error":
            text = _("should be one of {values}").format(values=ctx["expected"])
        else:
            text = error["msg"].replace("Input should", "should")
        got = _("{where}: {problem}, got {value}")
        issues.append(
            doc.issue(
                path, got.format(where=_show(path), problem=text, value=_describe(error["input"]))
            )
        )
    return issues
