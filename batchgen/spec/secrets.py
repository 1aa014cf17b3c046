"""Keeping API keys out of specs: keys named like credentials and ``sk-...`` strings.

A spec is a file people commit and share, so a key written in it (in a value, a key
named like a credential, or a comment) is refused at its line, and its value never
appears in a message: :func:`secret_issues` registers what it finds with
:func:`batchgen.errors.register_secret`.
"""

from __future__ import annotations

import re
from pathlib import Path

from batchgen.errors import SpecIssue, register_secret
from batchgen.i18n import N_, _
from batchgen.spec.yamlsrc import MAX_BYTES, NodePath, YamlDocument

__all__ = ["NO_KEYS", "secret_issues", "secrets_in_file"]

_SECRET_TEXT = re.compile(r"sk-[A-Za-z0-9_\-]{16,}")
_SECRET_NAMES = frozenset(
    {"key", "apikey", "token", "authorization", "auth", "secret", "password", "bearer"}
)
_SECRET_SUFFIXES = ("apikey", "token", "secret", "password", "secretkey", "accesskey")
NO_KEYS = N_("an API key must never be written in a spec; set COBABA_API_KEY in the environment")


def _is_secret_name(key: str) -> bool:
    flat = re.sub(r"[^a-z]", "", key.lower())
    return flat in _SECRET_NAMES or flat.endswith(_SECRET_SUFFIXES)


def _text_secrets(text: str, file: str) -> list[SpecIssue]:
    issues = []
    for match in _SECRET_TEXT.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        column = match.start() - (text.rfind("\n", 0, match.start()) + 1) + 1
        message = _("this looks like an API key: {why}").format(why=_(NO_KEYS))
        issues.append(SpecIssue(file, line, column, message))
    return issues


def secrets_in_file(path: Path, display: str) -> list[SpecIssue]:
    """``sk-...`` strings in the raw text of a file that did not parse (its comments too)."""
    try:
        if path.stat().st_size > MAX_BYTES:
            return []
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return []
    return _text_secrets(text, display)


def secret_issues(doc: YamlDocument) -> tuple[list[SpecIssue], list[NodePath]]:
    """Keys named like credentials (at their key) and ``sk-...`` strings (anywhere)."""
    issues = _text_secrets(doc.text, doc.file)
    paths: list[NodePath] = []
    stack: list[tuple[NodePath, object]] = [((), doc.data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            for key, child in value.items():
                if _is_secret_name(key):
                    paths.append((*path, key))
                    if isinstance(child, str):
                        register_secret(child)  # keep it out of every later message
                    message = _("key {key!r} is not allowed: {why}")
                    message = message.format(key=key, why=_(NO_KEYS))
                    issues.append(doc.issue((*path, key), message, at_key=True))
                else:
                    stack.append(((*path, key), child))
        elif isinstance(value, list):
            stack.extend(((*path, i), child) for i, child in enumerate(value))
    return issues, paths
