"""The parser of every command, ``main(argv)``, logging, and the one-line error reports.

:func:`main` never raises for bad input: argparse's usage errors, library errors and
anything unexpected all end as one line on stderr and an exit code (see
:mod:`batchgen.cli`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from batchgen import __version__
from batchgen.cli.check_commands import cmd_check
from batchgen.cli.ledger_commands import cmd_export, cmd_merge, cmd_retry, cmd_status
from batchgen.cli.run_commands import cmd_lock, cmd_run, cmd_sim
from batchgen.cli.spec_commands import cmd_plan, cmd_schema, cmd_validate
from batchgen.errors import (
    AccessDeniedError,
    AuthenticationError,
    BatchgenError,
    BusinessError,
    QuotaExceededError,
    SpecError,
    leaf_error,
    redact,
)
from batchgen.i18n import LANGUAGES, _, language_from_env, using

__all__ = ["build_parser", "main"]

EPILOG = "Docs: README.md. The API key comes from COBABA_API_KEY, never from a spec."


class _RedactFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = ()
        return True


def _setup_logging(verbosity: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RedactFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    # The runner's messages reach the user through the progress hook; logs are for -v.
    logging.getLogger("batchgen").setLevel(logging.DEBUG if verbosity else logging.CRITICAL)
    for name in ("httpx2", "httpcore2", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbosity > 1 else logging.WARNING)


# --- parser ---------------------------------------------------------------------------------


def _spec_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", help="the job spec (YAML)")


def _sim_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sim",
        action="store_true",
        help="use the job's simulator output folder (<output>-sim), as `run --sim` wrote it",
    )


def _base_url_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--base-url", metavar="URL", help="service URL (overrides COBABA_BASE_URL and the spec)"
    )


def _sim_profile(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sim-profile",
        choices=("default", "gateway"),
        default="default",
        help="with --sim: gateway = like the real service (new-api's limiter and errors)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command (tests read its help)."""
    parser = argparse.ArgumentParser(
        prog="batchgen",
        description="Batch image generation through the CobabaAi API: YAML matrix jobs,"
        " a resumable ledger, rate-limit-aware runs, and a local simulator.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"batchgen {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log details (-vv: HTTP)"
    )
    parser.add_argument(
        "--lang",
        choices=tuple(LANGUAGES),
        help="the language of batchgen's messages (default: zh when LC_ALL, LC_MESSAGES or"
        " LANG starts with zh, else en)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        name: str, fn: Callable[[argparse.Namespace], int], help_: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, epilog=EPILOG)
        p.set_defaults(func=fn)
        return p

    p = add("run", cmd_run, "run (or resume) a job: submit, poll, download")
    _spec_arg(p)
    p.add_argument(
        "--sim",
        action="store_true",
        help="run against the built-in simulator (output goes to <output>-sim)",
    )
    p.add_argument(
        "--sim-latency",
        type=float,
        default=1.0,
        metavar="S",
        help="simulated task latency with --sim (default 1.0)",
    )
    p.add_argument(
        "--sim-fail-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="simulated failure rate with --sim",
    )
    _sim_profile(p)
    p.add_argument(
        "--no-check",
        action="store_true",
        help="skip the preflight (the key, its models, live prices, balance): table prices,"
        " budget by estimate only",
    )
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="run only shard I (0-based) of N, in its own ledger (default: BATCHGEN_SHARD,"
        " JOB_COMPLETION_INDEX with --shards, or SLURM_ARRAY_TASK_ID and _COUNT)",
    )
    p.add_argument(
        "--shards",
        type=int,
        metavar="N",
        help="the shard count, with JOB_COMPLETION_INDEX (a Kubernetes Indexed Job) as I",
    )
    p.add_argument(
        "--take-over",
        action="store_true",
        help="take the job's ledger from a run that still looks alive; if it is in fact"
        " running, both submit the same tasks and the service charges twice",
    )
    _base_url_arg(p)
    p.add_argument(
        "--concurrency",
        type=int,
        metavar="N",
        help="tasks in flight at once (overrides limits.concurrency)",
    )
    p.add_argument(
        "--rpm",
        type=float,
        metavar="N",
        help="submissions per minute (overrides limits.requests_per_minute)",
    )
    p.add_argument(
        "--max-tasks",
        type=int,
        metavar="N",
        help="allow a matrix this large (overrides limits.max_tasks)",
    )
    p.add_argument(
        "--gallery", action="store_true", help="write the HTML gallery at the end of the run"
    )
    p.add_argument(
        "--resubmit-unknown",
        action="store_true",
        help="resubmit tasks whose submission answer was lost (may pay twice)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--quiet", action="store_true", help="no progress bars; warnings and the summary only"
    )
    mode.add_argument(
        "--json", action="store_true", help="JSON lines on stdout: events, progress, summary"
    )

    p = add(
        "check",
        cmd_check,
        "ask the service before paying: the key, its models, live prices, the balance",
    )
    _spec_arg(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _base_url_arg(p)
    p.add_argument(
        "--sim",
        action="store_true",
        help="ask the built-in simulator (no key needed; its job folder is <output>-sim)",
    )
    _sim_profile(p)

    p = add(
        "lock",
        cmd_lock,
        "ask the chat model for the spec's generated axes and write <spec>.lock.yaml",
    )
    _spec_arg(p)
    p.add_argument(
        "--refresh",
        action="append",
        metavar="AXIS",
        help="ask again for this generated axis, even if locked (repeatable; its tasks get"
        " new keys)",
    )
    _base_url_arg(p)
    p.add_argument(
        "--sim",
        action="store_true",
        help="ask the built-in simulator's chat model (no key needed); writes"
        " <spec>.sim.lock.yaml, which only --sim commands read",
    )
    _sim_profile(p)

    p = add("validate", cmd_validate, "check a job spec; print a one-line summary or every error")
    _spec_arg(p)
    p = add("plan", cmd_plan, "show what a job will run: counts per axis value, cost, duration")
    _spec_arg(p)
    p.add_argument("--json", action="store_true", help="one JSON object per task per line")
    p.add_argument("--max-tasks", type=int, metavar="N", help="allow a matrix this large")
    p.add_argument(
        "--live",
        action="store_true",
        help="price with the service's live prices (asks it, like check; with --sim, the"
        " simulator's)",
    )
    p.add_argument("--base-url", metavar="URL", help="service URL for --live (overrides the spec)")
    _sim_flag(p)
    _sim_profile(p)
    add("schema", cmd_schema, "print the JSON Schema of job specs (for editors)")

    p = add("status", cmd_status, "counts by state, failures by code, spend")
    _spec_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    _sim_flag(p)

    p = add("retry", cmd_retry, "mark failed and/or unknown tasks for the next run")
    _spec_arg(p)
    p.add_argument("--failed", action="store_true", help="retry failed tasks (the default)")
    p.add_argument("--unknown", action="store_true", help="resubmit unknown tasks (may pay twice)")
    p.add_argument("--code", metavar="CODE", help="only tasks that failed with this error code")
    _sim_flag(p)

    p = add(
        "merge",
        cmd_merge,
        "write a sharded job's one metadata.jsonl and summary.json from all its shards",
    )
    _spec_arg(p)
    p.add_argument(
        "--from",
        dest="sources",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="the output folder of shards run elsewhere: copy in its ledgers and images"
        " (checked by sha256); repeatable",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _sim_flag(p)

    p = add(
        "export",
        cmd_export,
        "export every task with its result as JSON lines or CSV, or write the output"
        " folder's Hugging Face dataset card (--format hf)",
    )
    _spec_arg(p)
    p.add_argument(
        "--format",
        choices=("jsonl", "csv", "hf"),
        default="jsonl",
        help="output format; hf: metadata.jsonl and a README.md dataset card in the output folder",
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    _sim_flag(p)

    from batchgen.gallery.build import configure_parser as gallery_parser
    from batchgen.gallery.build import run_from_args as gallery_run

    p = add("gallery", gallery_run, "write index.html: the job's images on labelled grids, offline")
    gallery_parser(p)

    from batchgen.sim.cli import configure_parser

    p = add("sim", cmd_sim, "start the CobabaAi simulator on loopback")
    configure_parser(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv``; return the exit code (never raises for bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse's own usage errors and --help
        return int(exc.code or 0) if isinstance(exc.code, int) else 2
    _setup_logging(args.verbose)
    with using(args.lang or language_from_env()):
        try:
            return int(args.func(args))
        except BaseException as exc:  # every error becomes one line and an exit code
            return _report(leaf_error(exc), verbose=args.verbose)


def _explain(exc: BatchgenError) -> str:
    """The line for an error that stops a command: for the service's refusals that
    stop a run, what it means for the job and what to do, then the service's own
    message as it sent it (never translated); for the rest, the error's message."""
    detail = str(exc)
    if isinstance(exc, AccessDeniedError):
        ours = _(
            "this key may not be used from this machine's IP address (the key's IP"
            " allow-list in the console); nothing is lost"
        )
    elif isinstance(exc, AuthenticationError):
        ours = _(
            "the service refused the key (wrong, expired or used up): check COBABA_API_KEY"
            " in the console (令牌管理) and run again; nothing is lost"
        )
    elif isinstance(exc, QuotaExceededError):
        ours = _(
            "no credit left (the account's balance or the key's own quota): top it up and"
            " run again; tasks not paid for stay pending"
        )
    elif isinstance(exc, BusinessError):
        ours = _(
            "the service refused the request (often: no credit left); tasks not paid for"
            " stay pending"
        )
    else:
        return detail
    return _("{ours}. The service said: {detail}").format(ours=ours, detail=detail)


def _report(exc: BaseException, *, verbose: int) -> int:
    if isinstance(exc, SpecError):
        for issue in exc.issues:
            print(str(issue), file=sys.stderr)
        return exc.exit_code
    if isinstance(exc, BatchgenError):
        print(_("batchgen: error: {message}").format(message=_explain(exc)), file=sys.stderr)
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        print(_("batchgen: interrupted"), file=sys.stderr)
        return 130
    if isinstance(exc, SystemExit):
        return int(exc.code) if isinstance(exc.code, int) else 1
    if isinstance(exc, BrokenPipeError):
        return 0
    if isinstance(exc, OSError):
        print(_("batchgen: error: {message}").format(message=redact(str(exc))), file=sys.stderr)
        return 1
    if verbose:
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    message = redact(f"{type(exc).__name__}: {exc}")
    line = _("batchgen: internal error: {message} (run with -v for details)")
    print(line.format(message=message), file=sys.stderr)
    return 1
