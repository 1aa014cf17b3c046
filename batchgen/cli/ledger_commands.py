"""The commands that read or amend a job's ledger outside a run: ``status``,
``retry``, ``export``.

Each prints what :mod:`batchgen.ledger.report` returns (as text, JSON or CSV);
``retry`` ends with the command that resubmits what it marked; ``export --format hf``
writes the dataset card into the output folder and prints where.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import TextIO

import anyio

from batchgen.cli.args import load_spec_arg, quote_path
from batchgen.errors import UsageError

__all__ = ["cmd_export", "cmd_retry", "cmd_status"]


def cmd_status(args: argparse.Namespace) -> int:
    """Print counts by state, failures by code and spend (or JSON)."""
    from batchgen.ledger.report import job_status

    spec = load_spec_arg(args)
    status = anyio.run(job_status, spec, backend="asyncio")
    if args.json:
        print(json.dumps(status, indent=2, ensure_ascii=False))
        return 0
    counts = status["counts"]
    where = status["ledger"]
    if isinstance(where, list):
        where = f"{len(where)} ledgers ({', '.join(status['shards']) or 'root'})"
    print(f"{status['job']}: {status['tasks']} task(s) in {where}")
    for holder in status["running"]:
        print(f"  running: {holder}")
    for state, count in counts.items():
        print(f"  {state:<12} {count:>8}")
    if status["failures_by_code"]:
        print("failures by code:")
        for code, count in status["failures_by_code"].items():
            print(f"  {code:<24} {count:>6}")
    currency = status["currency"]
    spent = f"spent {status['spent']:.4f} {currency}"
    if status["spent_measured"] is not None:
        spent += (
            f" (estimated; the service's usage counter measured {status['spent_measured']:.4f})"
        )
    print(f"{spent}; to spend (est.) {status['remaining']:.4f}")
    if status["not_in_spec"]:
        print(f"{status['not_in_spec']} task(s) in the ledger are no longer in the spec")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    """Mark failed and/or unknown tasks for the next run; print the next command."""
    from batchgen.ledger.report import retry_tasks

    spec = load_spec_arg(args)
    failed = args.failed or not (args.failed or args.unknown)
    result = anyio.run(
        lambda: retry_tasks(spec, failed=failed, unknown=args.unknown, code=args.code),
        backend="asyncio",
    )
    for line in result:
        print(line)
    print(f"next: batchgen run {quote_path(str(spec.path))}{' --sim' if args.sim else ''}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write every task with its result as JSON lines or CSV, or the dataset card."""
    from batchgen.ledger.report import export_card, export_rows

    spec = load_spec_arg(args)
    if args.format == "hf":
        if args.output:
            raise UsageError("--format hf writes README.md into the output folder: drop -o")
        card = anyio.run(export_card, spec, backend="asyncio")
        print(f"{quote_path(str(card))}: the dataset card, beside metadata.jsonl")
        return 0
    out: TextIO = (
        open(args.output, "w", encoding="utf-8", newline="")  # noqa: SIM115 - closed below
        if args.output
        else sys.stdout
    )
    try:
        rows = anyio.run(export_rows, spec, backend="asyncio")
        if args.format == "jsonl":
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["key"])
            writer.writeheader()
            for row in rows:
                writer.writerow(
                    {
                        k: json.dumps(v, ensure_ascii=False) if isinstance(v, dict | list) else v
                        for k, v in row.items()
                    }
                )
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    """Write the job's one manifest and summary from all its shards (gathered first)."""
    from batchgen.output.merge import merge

    spec = load_spec_arg(args)
    result = anyio.run(lambda: merge(spec, sources=args.sources), backend="asyncio")
    if args.json:
        print(json.dumps(result.as_dict(), indent=2, ensure_ascii=False))
        return 0
    counts = ", ".join(f"{n} {s}" for s, n in result.counts.items() if n)
    print(f"{spec.name}: {result.ledgers} ledger(s), {result.tasks} task(s) ({counts})")
    if result.copied_ledgers or result.copied_images:
        print(
            f"  gathered {len(result.copied_ledgers)} ledger(s) and {result.copied_images}"
            " image(s), each checked by sha256"
        )
    print(f"  {result.images} image(s) in {result.metadata}")
    return 0
