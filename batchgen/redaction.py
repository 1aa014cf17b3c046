"""Secrets never leave in text: the API key and session cookies are masked everywhere.

Every message of :mod:`batchgen.errors`, every ledger detail, log line and progress
message passes through :func:`redact`, which masks every value given to
:func:`register_secret` and anything shaped like a CobabaAi key (``sk-...``). Both are
re-exported by :mod:`batchgen.errors`, where callers have always found them.
"""

from __future__ import annotations

import re
import threading

__all__ = ["redact", "register_secret"]

_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()  # aiosqlite's thread may format messages too
_KEY_PATTERN = re.compile(r"sk-[A-Za-z0-9_\-]{6,}")
_MASK = "sk-***"


def register_secret(value: str) -> None:
    """Remember ``value`` so that :func:`redact` removes it from any text.

    Values shorter than 4 characters are ignored: masking them would garble text.
    """
    if len(value) >= 4:
        with _SECRETS_LOCK:
            _SECRETS.add(value)


def redact(text: str) -> str:
    """Return ``text`` with every registered secret and every ``sk-…`` token masked."""
    with _SECRETS_LOCK:
        secrets = sorted(_SECRETS, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, _MASK)
    return _KEY_PATTERN.sub(_MASK, text)
