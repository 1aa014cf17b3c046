"""The commands that run something: ``run`` (a job), ``lock`` (its generated axes) and
``sim`` (the simulator).

``run`` wires the runner to a progress hook of :mod:`batchgen.cli.hooks` and to
Ctrl-C / SIGTERM (the first stops new submissions, the second quits), then prints the
run's summary with what to do next. ``lock`` asks the chat model for the values of the
spec's generated axes and prints one line per axis it locked.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

import anyio

from batchgen.cli.args import load_spec_arg, quote_path
from batchgen.cli.hooks import pick_hook
from batchgen.i18n import N_, _

__all__ = ["cmd_lock", "cmd_run", "cmd_sim"]


def cmd_run(args: argparse.Namespace) -> int:
    """Run (or resume) the job; print its summary; exit with the run's code."""
    from batchgen.runner.job import RunOptions

    spec = load_spec_arg(args)
    options = RunOptions(
        base_url=args.base_url,
        concurrency=args.concurrency,
        rpm=args.rpm,
        max_tasks=args.max_tasks,
        resubmit_unknown=args.resubmit_unknown,
        argv=["batchgen", *sys.argv[1:]],
        check=not args.no_check,
        shard=_shard(args),
        take_over=args.take_over,
    )
    hook = pick_hook(json_lines=args.json, quiet=args.quiet)
    summary = anyio.run(_run_async, spec, options, hook, args, backend="asyncio")
    if args.json:
        print(json.dumps({"event": "summary", **summary.as_dict()}, ensure_ascii=False))
    else:
        print(_format_summary(summary, spec))
    if args.gallery:
        from batchgen.gallery.build import build_gallery

        index = anyio.run(build_gallery, spec, backend="asyncio")
        print(
            _("  gallery: {index}").format(index=index),
            file=sys.stderr if args.json else sys.stdout,
        )
    return int(summary.exit_code)


def _shard(args: argparse.Namespace) -> Any:
    """The shard this run is: ``--shard I/N``, else what the scheduler's variables say."""
    from batchgen.ledger.paths import parse_shard, shard_from_env

    if args.shard:
        return parse_shard(args.shard)
    return shard_from_env(os.environ, shards=args.shards)


async def _run_async(spec: Any, options: Any, hook: Any, args: argparse.Namespace) -> Any:
    from batchgen.runner.job import RunHandle, arun, sim_session

    handle = RunHandle()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_watch_signals, handle, hook)
        try:
            if args.sim:
                async with sim_session(
                    profile=args.sim_profile,
                    latency=args.sim_latency,
                    fail_rate=args.sim_fail_rate,
                    seed=0,
                ) as (base_url, auth):
                    hook.on_message(
                        "info", _("simulator at {url} (no API key needed)").format(url=base_url)
                    )
                    options = _replace(options, base_url=base_url, auth=auth, seed=0)
                    summary = await arun(spec, options, hook=hook, handle=handle)
            else:
                summary = await arun(spec, options, hook=hook, handle=handle)
        finally:
            tg.cancel_scope.cancel()
    return summary


def _replace(options: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(options, **changes)


async def _watch_signals(handle: Any, hook: Any) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _signal in signals:
            handle.interrupt()
            if handle.requests == 1:
                hook.on_message(
                    "warning",
                    _(
                        "stopping: no new submissions; waiting for answers in flight"
                        " (Ctrl-C again to quit at once)"
                    ),
                )
            else:
                hook.on_message("warning", _("quitting now"))


#: Each state's part of the summary line, in the order shown.
_STATE_COUNTS = {
    "done": N_("{count} done"),
    "failed": N_("{count} failed"),
    "unknown": N_("{count} unknown"),
    "pending": N_("{count} pending"),
    "running": N_("{count} running"),
    "downloading": N_("{count} downloading"),
}


def _format_summary(summary: Any, spec: Any) -> str:
    counts = summary.counts
    parts = [_(text).format(count=counts[s]) for s, text in _STATE_COUNTS.items() if counts.get(s)]
    run = summary.this_run
    spent = _("spent {amount:.4f} {currency}").format(
        amount=summary.spent_total, currency=spec.currency
    )
    if summary.spent_measured is not None:
        spent += _(" (estimated; the service measured {measured:.4f})").format(
            measured=summary.spent_measured
        )
    states = _(", ").join(parts) or _("nothing to do")
    lines = [
        _("{job}: {states} of {tasks} task(s) in {elapsed:.1f}s; {spent}").format(
            job=summary.job,
            states=states,
            tasks=summary.tasks,
            elapsed=summary.elapsed,
            spent=spent,
        )
    ]
    if run:
        lines.append(
            _(
                "  this run: {submitted} submitted, {saved} saved, {limited} rate-limited (429),"
                " {retried} retried, {regenerated} regenerated"
            ).format(
                submitted=run.get("accepted", 0),
                saved=run.get("downloaded", 0),
                limited=run.get("rate_limited", 0),
                retried=run.get("retried", 0),
                regenerated=run.get("regenerated", 0),
            )
        )
    if summary.failures_by_code:
        codes = ", ".join(f"{c} {n}" for c, n in summary.failures_by_code.items())
        lines.append(_("  failures by code: {codes}").format(codes=codes))
    lines.extend(f"  {m}" for m in summary.messages)
    if summary.not_in_spec:
        lines.append(
            _("  {count} task(s) in the ledger are no longer in the spec").format(
                count=summary.not_in_spec
            )
        )
    lines.append(_("  output: {folder}").format(folder=summary.output))
    if summary.shard:
        lines.append(
            _(
                "  shard {shard}: `batchgen status {spec}` counts every shard; once all are"
                " done, `batchgen merge {spec}` writes the job's one metadata.jsonl"
            ).format(shard=summary.shard, spec=quote_path(summary.spec))
        )
    if summary.exit_code == 130:
        shard = f" --shard {summary.shard}" if summary.shard else ""
        lines.append(
            _("  interrupted: run `batchgen run{shard} {spec}` again to resume").format(
                shard=shard, spec=quote_path(summary.spec)
            )
        )
    elif counts.get("unknown"):
        lines.append(
            _(
                "  unknown tasks may have been charged; review them with `batchgen status`, then"
                " `batchgen retry SPEC --unknown` to resubmit"
            )
        )
    elif counts.get("failed"):
        lines.append(
            _("  `batchgen retry SPEC --failed` then `batchgen run SPEC` tries the failed again")
        )
    return "\n".join(lines)


def cmd_lock(args: argparse.Namespace) -> int:
    """Lock the spec's generated axes; print what was asked for, and where it went."""
    from batchgen.cli.hooks import LineHook
    from batchgen.runner.locking import describe_locked

    spec = load_spec_arg(args, lock_warnings=False)
    hook = LineHook(stream=sys.stderr)  # lock sends no progress: only its messages
    report = anyio.run(_lock_async, spec, args, hook, backend="asyncio")
    if not report.axes:
        print(
            f"{spec.display_path}: nothing to lock: every generated axis is locked"
            " (`--refresh AXIS` asks again)"
            if spec.generated
            else f"{spec.display_path}: the spec has no generated axis"
        )
        return 0
    for axis in report.axes:
        print(describe_locked(axis))
    print(
        f"  locked in {quote_path(str(report.lock_path))} ({report.requests} chat request(s)"
        " this time); commit it with the spec"
    )
    if args.refresh:
        print("  the refreshed axes have new values: their tasks get new keys")
    return 0


async def _lock_async(spec: Any, args: argparse.Namespace, hook: Any) -> Any:
    from batchgen.runner.job import sim_session
    from batchgen.runner.locking import lock_job

    refresh = tuple(args.refresh or ())
    if args.sim:
        async with sim_session(profile=args.sim_profile, seed=0) as (base_url, auth):
            return await lock_job(
                spec, refresh=refresh, base_url=base_url, auth=auth, hook=hook, seed=0
            )
    return await lock_job(spec, refresh=refresh, base_url=args.base_url, hook=hook)


def cmd_sim(args: argparse.Namespace) -> int:
    """Serve the simulator until Ctrl-C or SIGTERM."""
    from batchgen.sim.cli import run_from_args

    return int(run_from_args(args))
