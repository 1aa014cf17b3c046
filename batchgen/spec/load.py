"""Loading a job spec: every check up front, every problem at its line and column.

:func:`load_spec` reads the YAML safely (:mod:`batchgen.spec.yamlsrc`), refuses API keys
written in the file, checks structure and types with the pydantic models of
:mod:`batchgen.spec.model`, then resolves and checks the meaning: row files, reference
images, placeholders, model families, the size of the matrix (counted, never
expanded) and the budget. It raises one :class:`~batchgen.errors.SpecError` holding
every problem, sorted by position; warnings of a valid spec end up on
:attr:`Spec.warnings`.

Structure problems (unknown keys, wrong types) are reported together first; the
meaning is checked, and its problems reported together, once the structure is sound.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from batchgen.api.catalog import DEFAULT_PRICES
from batchgen.errors import ConfigError, SpecError, SpecIssue
from batchgen.i18n import _
from batchgen.spec.checks import check_combinations, check_params
from batchgen.spec.combos import Counts, MatrixDef, count_combinations
from batchgen.spec.lock import (
    MISSING,
    STALE,
    GeneratedAxis,
    GeneratedAxisModel,
    lock_path,
    read_lock,
    unlocked_issues,
)
from batchgen.spec.model import Limits, SpecModel, structure_issues
from batchgen.spec.placeholders import Template, TemplateError, parse_template
from batchgen.spec.request import TaskDefaults
from batchgen.spec.resolve import (
    REQUEST_VARS,
    Context,
    TemplateUse,
    resolve_matrix,
)
from batchgen.spec.secrets import secret_issues as secret_issues_of
from batchgen.spec.secrets import secrets_in_file
from batchgen.spec.yamlsrc import NodePath, YamlDocument, load_yaml_file

__all__ = ["DEFAULT_BASE_URL", "Limits", "Spec", "load_spec"]

#: Where requests go when neither the command line, the environment nor the spec says.
DEFAULT_BASE_URL = "https://cobabaai.com/v1"


@dataclass(frozen=True, slots=True)
class Spec:
    """A loaded, fully validated job spec: what the planner and the runner use.

    ``path`` and ``output_dir`` are absolute; ``display_path`` is the path as given
    (used in messages). ``prices`` is the built-in price list with the spec's prices
    merged over it. ``digest`` hashes the spec's content (not its formatting or
    comments) together with the bytes of its row files and reference images.
    """

    path: Path
    display_path: str
    name: str
    description: str
    output_dir: Path
    layout: str
    endpoint: str
    reply: str
    base_url: str
    limits: Limits
    prices: Mapping[str, float]
    currency: str
    repeat: int
    defaults: TaskDefaults
    matrix: MatrixDef
    counts: Counts
    estimated_cost: float
    tasks_by_model: Mapping[str, int]
    digest: str
    warnings: tuple[SpecIssue, ...] = ()
    #: The spec's own ``prices`` (deliberate overrides); ``prices`` has them merged over
    #: the built-in table (and, in a run, over the service's live prices).
    price_overrides: Mapping[str, float] = dataclasses.field(default_factory=dict)
    #: Where each model's price in ``prices`` came from: spec, live, table (or none).
    price_sources: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: The generated axes (``{generate: ...}``) and the state of their lock.
    generated: tuple[GeneratedAxis, ...] = ()
    #: The lockfile of the generated axes (it may not exist yet).
    lock_path: Path | None = None
    #: What the saved images carry: ``none`` (the service's bytes) or ``parameters``.
    embed: str = "none"

    @property
    def unlocked(self) -> tuple[GeneratedAxis, ...]:
        """Generated axes with no values yet: ``lock`` (or ``run``) asks for them."""
        return tuple(g for g in self.generated if g.state == MISSING)

    @property
    def stale(self) -> tuple[GeneratedAxis, ...]:
        """Generated axes whose lock was made with another model, instruction or count."""
        return tuple(g for g in self.generated if g.state == STALE)

    def relocked(self) -> Spec:
        """The same spec with its generated axes read again from its lockfile (once a
        lock was written); everything else (output, prices, limits) is kept."""
        fresh = load_spec(self.path, max_tasks=self.limits.max_tasks, lock_file=self.lock_path)
        return dataclasses.replace(
            self,
            matrix=fresh.matrix,
            counts=fresh.counts,
            digest=fresh.digest,
            generated=fresh.generated,
            warnings=fresh.warnings,
        )

    def require_locked(self, *, stale_ok: bool = False) -> None:
        """Raise SpecError, at each axis, unless every generated axis has its values (and,
        unless ``stale_ok``, a fresh lock): placeholders must never reach a request."""
        issues = unlocked_issues(self.display_path, self.generated, stale_ok=stale_ok)
        if issues:
            raise SpecError(issues)

    @property
    def task_count(self) -> int:
        """The number of tasks the spec expands to."""
        return self.counts.total * self.repeat

    def for_simulator(self) -> Spec:
        """The same job writing to ``<output>-sim``, so simulated images never mix with
        real ones (``--sim``). Keys are unchanged: they do not depend on the output."""
        sim_dir = self.output_dir.with_name(self.output_dir.name + "-sim")
        return dataclasses.replace(self, output_dir=sim_dir)


def load_spec(
    path: str | os.PathLike[str],
    *,
    base_url: str | None = None,
    max_tasks: int | None = None,
    simulated: bool = False,
    lock_file: Path | None = None,
) -> Spec:
    """Load, check and resolve the job spec at ``path``.

    ``base_url`` (the ``--base-url`` option) wins over ``COBABA_BASE_URL``, which wins
    over the spec's ``api.base_url``. ``max_tasks`` (``--max-tasks``) replaces
    ``limits.max_tasks``. Generated axes take their values from ``<stem>.lock.yaml``
    beside the spec, or with ``simulated`` (``--sim``) from ``<stem>.sim.lock.yaml``
    (``lock_file`` names another).

    Raises :class:`SpecError` with every problem found (warnings included in
    ``issues``), and :class:`~batchgen.errors.ConfigError` if ``base_url`` or
    ``COBABA_BASE_URL`` is not an http(s) URL.
    """
    display = os.fspath(path)
    absolute = Path(os.path.normpath(os.path.abspath(display)))
    override = _override_base_url(base_url)
    try:
        doc = load_yaml_file(absolute, display_name=display)
    except SpecError as exc:
        raise SpecError(
            _sorted([*exc.issues, *secrets_in_file(absolute, display)], display)
        ) from None
    secret_issues, secret_paths = secret_issues_of(doc)
    if doc.data is None or not isinstance(doc.data, dict):
        what = "empty" if doc.data is None else "not a mapping of keys"
        raise SpecError(
            _sorted(
                [
                    *secret_issues,
                    SpecIssue(display, 1, 1, f"the spec is {what}: start with `version: 1`"),
                ],
                display,
            )
        )
    try:
        model = SpecModel.model_validate(doc.data)
    except ValidationError as exc:
        structural = structure_issues(doc, exc.errors(include_url=False), secret_paths)
        raise SpecError(_sorted([*secret_issues, *structural], display)) from None
    if secret_issues:
        raise SpecError(_sorted(secret_issues, display))
    locks = lock_file or lock_path(absolute, simulated=simulated)
    return _resolve(doc, model, absolute, override, max_tasks, locks)


def _sorted(issues: list[SpecIssue], spec_file: str) -> list[SpecIssue]:
    # The spec's own lines first, then other files (row files); duplicates dropped.
    unique = dict.fromkeys(issues)
    return sorted(unique, key=lambda i: (i.file != spec_file, i.file, i.line, i.column))


# --- meaning -----------------------------------------------------------------------------------


def _valid_url(value: str) -> bool:
    parts = urllib.parse.urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _override_base_url(argument: str | None) -> str | None:
    env = os.environ.get("COBABA_BASE_URL") or None
    for source, value in (("--base-url", argument), ("COBABA_BASE_URL", env)):
        if value:
            if not _valid_url(value):
                raise ConfigError(f"{source} is not an http(s) URL: {value!r}")
            return value.rstrip("/")
    return None


def _check_layout(ctx: Context, layout: str) -> Template | None:
    parts = layout.split("/")
    if "\\" in layout or any(part in ("", ".", "..") for part in parts):
        ctx.error(
            ("layout",),
            "layout must be a relative path of non-empty parts, without '.', '..' or '\\'",
        )
        return None
    try:
        whole = parse_template(layout)
        last = parse_template(parts[-1]).chunks[-1]
    except TemplateError as exc:
        ctx.error(("layout",), f"layout: {exc}")
        return None
    extension = last.rsplit(".", 1)[1] if "." in last else ""
    if extension and extension.lower() != "png":
        ctx.error(
            ("layout",),
            f"layout must end in .png or have no extension (it ends in '.{extension}')",
        )
        return None
    return whole


def _resolve(
    doc: YamlDocument,
    model: SpecModel,
    absolute: Path,
    override: str | None,
    max_tasks: int | None,
    locks: Path,
) -> Spec:
    limits = model.limits
    if max_tasks is not None:
        limits = limits.model_copy(update={"max_tasks": max_tasks})
    ctx = Context(doc, absolute.parent, max_rows=limits.max_tasks)
    if any(
        isinstance(axis, GeneratedAxisModel) for axis in (model.matrix.model_extra or {}).values()
    ):
        try:
            ctx.lock = read_lock(locks, os.path.join(os.path.dirname(doc.file), locks.name))
        except SpecError as exc:
            ctx.issues.extend(exc.issues)
    name = model.name or absolute.stem
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "job"
    if model.output is not None and any(ord(c) < 32 for c in model.output):
        ctx.error(("output",), "output must be a plain path: no NUL or control characters")
        model = model.model_copy(update={"output": None})
    if model.output is None and slug == "job" and name != "job":
        # Kept as it was (moving a job's folder would lose its ledger); say so instead.
        message = _(
            "the default output folder of job {name!r} is out/job (its name has no ASCII"
            " letters); set `output:`, e.g. output: out/{name}"
        )
        ctx.warn(("name",) if model.name else ("version",), message.format(name=name))
    output = Path(model.output or f"out/{slug}").expanduser()
    output_dir = Path(os.path.normpath(absolute.parent / output))
    spec_url = model.api.base_url
    if spec_url is not None and not _valid_url(spec_url):
        ctx.error(
            ("api", "base_url"), "base_url must be an http(s) URL, e.g. https://cobabaai.com/v1"
        )
        spec_url = None
    base_url = override or (spec_url or DEFAULT_BASE_URL).rstrip("/")

    # Every template is parsed before the matrix is resolved: the matrix checks
    # (unused axes, duplicate rows) need to know which variables templates use.
    if model.prompt is not None:
        ctx.template(model.prompt, ctx.where(("prompt",)), "prompt")
    images = tuple(
        ref
        for i, written in enumerate(model.images)
        if (ref := ctx.image(written, ctx.where(("images", i)))) is not None
    )
    start = len(ctx.templates)
    check_params(ctx, model.params, ("params",))
    param_templates: list[tuple[str | None, TemplateUse]] = [
        (None, use) for use in ctx.templates[start:]
    ]
    for model_name, params in model.model_params.items():
        start = len(ctx.templates)
        check_params(ctx, params, ("model_params", model_name))
        param_templates += [(model_name, use) for use in ctx.templates[start:]]
    layout = _check_layout(ctx, model.layout)
    matrix = resolve_matrix(ctx, model.matrix)
    if model.api.endpoint == "images" and (
        images or "images" in matrix.original_names or any(e.images for e in matrix.include)
    ):
        ctx.error(
            ("api", "endpoint"),
            "the images route takes no reference images: use generate or nano-banana "
            "for image-to-image",
        )
    if model.api.reply == "stream" and model.api.endpoint != "generate":
        ctx.error(
            ("api", "reply"),
            f"reply: stream is for the generate route; {model.api.endpoint} answers"
            " with a task id to poll (use reply: async or auto)",
        )
    defaults = TaskDefaults(
        model=model.model,
        aspect_ratio=model.aspect_ratio,
        image_size=model.image_size,
        prompt=model.prompt,
        images=images,
        params=dict(model.params),
        model_params={k: dict(v) for k, v in model.model_params.items()},
    )
    prices = {**DEFAULT_PRICES, **model.prices}
    counts = count_combinations(matrix)
    total = counts.total * model.repeat
    tasks_by_model: Mapping[str, int] = {}
    cost = 0.0
    if total > limits.max_tasks:
        where: NodePath = ("matrix",) if ("matrix",) in doc.value_marks else ("repeat",)
        ctx.error(
            where,
            _(
                "the job expands to {total:,} tasks, more than limits.max_tasks ({limit:,});"
                " raise limits.max_tasks (or pass --max-tasks) if you mean it"
            ).format(total=total, limit=limits.max_tasks),
            at_key=True,
        )
    elif not ctx.broken:
        estimate = check_combinations(
            ctx,
            matrix,
            counts,
            defaults,
            endpoint=model.api.endpoint,
            layout=layout,
            param_templates=param_templates,
            repeat=model.repeat,
            prices=prices,
        )
        tasks_by_model, cost = estimate.tasks_by_model, estimate.cost
        _check_budget(ctx, limits, estimate.unpriced, cost, model.currency)
        for model_name in model.model_params:
            if model_name not in tasks_by_model:
                ctx.warn(
                    ("model_params", model_name), f"no task uses model {model_name!r}", at_key=True
                )
    _check_overrides(ctx, model, matrix)
    if layout is not None:
        _check_layout_unique(ctx, layout, matrix, model.repeat)
    errors = [i for i in ctx.issues if i.severity == "error"]
    if errors:
        raise SpecError(_sorted(ctx.issues, doc.file))
    return Spec(
        path=absolute,
        display_path=doc.file,
        name=name,
        description=model.description or "",
        output_dir=output_dir,
        layout=model.layout,
        endpoint=model.api.endpoint,
        reply=model.api.reply,
        base_url=base_url,
        limits=limits,
        prices=prices,
        currency=model.currency,
        repeat=model.repeat,
        defaults=defaults,
        matrix=matrix,
        counts=counts,
        estimated_cost=cost,
        tasks_by_model=tasks_by_model,
        digest=_digest(doc.data, ctx),
        warnings=tuple(_sorted(ctx.issues, doc.file)),
        price_overrides=dict(model.prices),
        price_sources={
            m: "spec" if m in model.prices else ("table" if m in DEFAULT_PRICES else "none")
            for m in tasks_by_model
        },
        generated=tuple(ctx.generated),
        lock_path=locks,
        embed=model.embed,
    )


def _check_budget(
    ctx: Context, limits: Limits, unpriced: tuple[str, ...], cost: float, currency: str
) -> None:
    if limits.budget is None:
        return
    path = ("limits", "budget")
    if unpriced:
        ctx.error(
            path,
            _("a budget needs a price for every model; add {models} under `prices`").format(
                models=", ".join(unpriced)
            ),
        )
    elif cost > limits.budget:
        ctx.warn(
            path,
            _(
                "the estimated cost {cost:.2f} {currency} exceeds the budget {budget:g}"
                " {currency}: the run will stop when the budget is spent"
            ).format(cost=cost, currency=currency, budget=limits.budget),
        )


def _check_overrides(ctx: Context, model: SpecModel, matrix: MatrixDef) -> None:
    """Warn about top-level defaults that an axis always replaces."""
    original = matrix.original_names
    for name, value in (("prompt", model.prompt), ("images", model.images or None)):
        if value is not None and name in original:
            ctx.warn(
                (name,),
                f"the top-level {name} is never used: the matrix sets {name} for every task",
                at_key=True,
            )


def _check_layout_unique(ctx: Context, layout: Template, matrix: MatrixDef, repeat: int) -> None:
    """Warn when two tasks could get the same file name (the runner keeps both, renamed)."""
    fields = layout.fields
    if fields & {"key", "key8"}:
        return
    covered = set(fields)
    if "prompt" in fields:
        for use in ctx.templates:
            if use.what == "prompt":
                covered |= use.template.fields
    used = REQUEST_VARS.union(*(use.template.fields for use in ctx.templates))
    needed = {
        name for axis in matrix.axes for name in axis.names if name in used and len(axis.values) > 1
    }
    if repeat > 1:
        needed.add("variant")
    missing = sorted(needed - covered)
    if missing:
        shown = ", ".join("{" + name + "}" for name in missing)
        ctx.warn(
            ("layout",),
            f"layout uses neither {{key8}} nor {shown}: different tasks may be given the "
            "same file name",
        )


def _digest(data: object, ctx: Context) -> str:
    content = {
        "spec": data,
        "files": dict(sorted(ctx.file_digests.items())),
        "images": sorted(ctx.images.digests()),
    }
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
