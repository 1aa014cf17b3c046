"""Where a job's ledger lives: ``<output>/batchgen.sqlite``."""

from __future__ import annotations

from pathlib import Path

from batchgen.ledger.schema import LEDGER_NAME
from batchgen.spec.load import Spec

__all__ = ["ledger_path"]


def ledger_path(spec: Spec) -> Path:
    """Where the ledger of ``spec`` lives: ``<output>/batchgen.sqlite``."""
    return Path(spec.output_dir) / LEDGER_NAME
