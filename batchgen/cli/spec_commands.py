"""The commands about a job before it runs: ``validate``, ``plan``, ``schema``.

Each loads the spec (no network, no key) and prints what :mod:`batchgen.spec.plan`
returns; ``plan`` also reads the job's ledger, if there is one, to count the tasks
already done.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import anyio

from batchgen.cli.args import load_spec_arg

__all__ = ["cmd_plan", "cmd_schema", "cmd_validate"]


def cmd_validate(args: argparse.Namespace) -> int:
    """Print the one-line summary of a valid spec."""
    from batchgen.spec.plan import validate_summary

    spec = load_spec_arg(args)
    print(validate_summary(spec))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """Print the plan table, or one JSON object per task with ``--json``."""
    from batchgen.spec.plan import format_plan, plan_json_lines, plan_summary

    spec = load_spec_arg(args)
    if args.live:
        from batchgen.cli.check_commands import live_spec

        spec, notes = live_spec(spec, args)
        for note in notes:
            print(f"warning: {note}", file=sys.stderr)
    if args.json:
        out = sys.stdout
        for line in plan_json_lines(spec):
            out.write(line + "\n")
        return 0
    done = anyio.run(_done_keys, spec, backend="asyncio")
    print(format_plan(plan_summary(spec, done_keys=done)))
    return 0


async def _done_keys(spec: Any) -> frozenset[str]:
    from batchgen.ledger.job import open_job
    from batchgen.ledger.paths import job_ledgers

    if not job_ledgers(spec):
        return frozenset()
    async with open_job(spec) as job:
        return await job.done_keys()


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of job specs."""
    from batchgen.spec.plan import spec_json_schema

    print(json.dumps(spec_json_schema(), indent=2, ensure_ascii=False))
    return 0
