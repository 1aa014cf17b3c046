"""Messages in the reader's language, through the standard gettext catalogs.

At the top of the package, beside :mod:`batchgen.errors`, because the messages people
read most are written in several stages: the spec's validation messages, the errors
that stop a run (raised by the api, preflight and runner stages) and the CLI's own
lines and run summary. Each marks its text with :func:`_` (or :func:`ngettext`) where
it is written, and all of them translate through the one active catalog of the
``batchgen`` domain (``batchgen/locale/<lang>/LC_MESSAGES/batchgen.mo``, compiled from
the ``.po`` beside it by ``python3 tasks.py catalogs``; a test keeps the two in step).

The library speaks English unless told otherwise: the CLI picks the language once per
command (:func:`language_from_env`, or ``--lang``) and activates it with
:func:`using`. A message without a translation is shown in English, so marking more
messages never breaks anything. The service's own messages are never translated:
they reach the user as the service sent them, next to ours.

The active catalog lives in a context variable, so concurrent callers (tests running
the CLI in-process, threads) each see their own language.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import gettext
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Final

__all__ = [
    "DOMAIN",
    "LANGUAGES",
    "LOCALE_DIR",
    "N_",
    "_",
    "current_language",
    "language_from_env",
    "ngettext",
    "using",
]

DOMAIN: Final = "batchgen"
LOCALE_DIR: Final = Path(__file__).resolve().parent / "locale"
#: The languages batchgen speaks, with the catalog each reads (English is the source).
LANGUAGES: Final[Mapping[str, str | None]] = {"en": None, "zh": "zh_CN"}

_ACTIVE: contextvars.ContextVar[tuple[str, gettext.NullTranslations]] = contextvars.ContextVar(
    "batchgen_language", default=("en", gettext.NullTranslations())
)


def language_from_env(environ: Mapping[str, str] | None = None) -> str:
    """``"zh"`` when the locale asks for Chinese, else ``"en"``.

    The locale is the first non-empty of ``LC_ALL``, ``LC_MESSAGES`` and ``LANG``, the
    order POSIX gives them; any value starting with ``zh`` (``zh_CN.UTF-8``,
    ``zh_TW``, ``zh``) picks Chinese, which batchgen writes in simplified characters.
    """
    env = os.environ if environ is None else environ
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = env.get(name, "").strip()
        if value:
            return "zh" if value.lower().startswith("zh") else "en"
    return "en"


@functools.cache
def _catalog(language: str) -> gettext.NullTranslations:
    folder = LANGUAGES.get(language)
    if folder is None:
        return gettext.NullTranslations()
    # fallback: a missing catalog (a broken install) means English, not a crash.
    return gettext.translation(DOMAIN, LOCALE_DIR, languages=[folder], fallback=True)


@contextlib.contextmanager
def using(language: str) -> Iterator[None]:
    """Translate into ``language`` (a key of :data:`LANGUAGES`) inside the block.

    Raises ValueError for a language batchgen does not speak.
    """
    if language not in LANGUAGES:
        raise ValueError(f"unknown language {language!r} (known: {', '.join(LANGUAGES)})")
    token = _ACTIVE.set((language, _catalog(language)))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def current_language() -> str:
    """The language messages are being written in (``"en"`` unless :func:`using` says)."""
    return _ACTIVE.get()[0]


def _(message: str) -> str:
    """``message`` in the active language (itself when it has no translation)."""
    return _ACTIVE.get()[1].gettext(message)


def N_(message: str) -> str:
    """Mark ``message`` for the catalogs without translating it (translate it later,
    where it is shown, with :func:`_`): for tables of messages built at import time."""
    return message


def ngettext(singular: str, plural: str, n: int) -> str:
    """The form of a message for the count ``n``, in the active language."""
    return _ACTIVE.get()[1].ngettext(singular, plural, n)
