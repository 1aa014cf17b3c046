"""What the commands share: the job spec their SPEC argument names, and paths to suggest.

Every command that takes SPEC loads it the same way (``--base-url``, ``--max-tasks``
and ``--sim`` applied when the command has them, warnings printed on stderr), and
commands that suggest a next command quote its path the same way.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = ["load_spec_arg", "quote_path"]


def load_spec_arg(args: argparse.Namespace, *, lock_warnings: bool = True) -> Any:
    """The spec ``args.spec`` names, with the command's overrides; its warnings printed
    (but for those about generated axes' locks unless ``lock_warnings``: ``lock`` fixes
    them)."""
    from batchgen.spec.load import load_spec

    spec = load_spec(
        args.spec,
        base_url=getattr(args, "base_url", None),
        max_tasks=getattr(args, "max_tasks", None),
        simulated=bool(getattr(args, "sim", False)),
    )
    axes = {(g.where.file, g.where.line) for g in spec.generated}
    for warning in spec.warnings:
        if lock_warnings or (warning.file, warning.line) not in axes:
            print(str(warning), file=sys.stderr)
    if getattr(args, "sim", False):
        spec = spec.for_simulator()
    return spec


def quote_path(path: str) -> str:
    """``path`` relative to the current folder, quoted if it has a space (for a hint)."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        rel = path
    return rel if " " not in rel else f"'{rel}'"
