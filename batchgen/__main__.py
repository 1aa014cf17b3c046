"""``python -m batchgen`` and the ``batchgen`` console script."""

from __future__ import annotations

from batchgen.cli.entry import entrypoint

__all__ = ["entrypoint"]

if __name__ == "__main__":
    entrypoint()
