"""Who we are and where we talk to: credentials, timeouts and the base URL.

:class:`BearerAuth` (the API key, default from ``COBABA_API_KEY``) and
:class:`PlaygroundAuth` (a site session) are the two ways to sign in; their secrets are
kept out of every repr. :class:`Timeouts` bounds each phase of a request.
:func:`check_base_url` validates the base URL a client is given and :func:`origin_of`
derives the host root that the playground and admin routes hang from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

import httpx2 as httpx

from batchgen.errors import ConfigError, redact
from batchgen.i18n import _

__all__ = [
    "API_KEY_ENV",
    "BASE_URL_ENV",
    "DEFAULT_BASE_URL",
    "SESSION_ENV",
    "USER_ID_ENV",
    "BearerAuth",
    "PlaygroundAuth",
    "Timeouts",
    "auth_from_env",
    "check_base_url",
    "origin_of",
]

DEFAULT_BASE_URL: Final = "https://cobabaai.com/v1"
API_KEY_ENV: Final = "COBABA_API_KEY"
BASE_URL_ENV: Final = "COBABA_BASE_URL"
SESSION_ENV: Final = "COBABA_SESSION"
USER_ID_ENV: Final = "COBABA_USER_ID"


@dataclass(frozen=True, slots=True)
class BearerAuth:
    """The API key, sent as ``Authorization: Bearer <key>``."""

    api_key: str = field(repr=False)

    @classmethod
    def from_env(cls) -> BearerAuth:
        """Read ``COBABA_API_KEY``. Raises ConfigError when it is unset or blank."""
        key = os.environ.get(API_KEY_ENV, "").strip()
        if not key:
            raise ConfigError(
                _("{env} is not set: export your CobabaAi key (or use --sim)").format(
                    env=API_KEY_ENV
                ),
                code="missing_api_key",
            )
        return cls(key)


@dataclass(frozen=True, slots=True)
class PlaygroundAuth:
    """A logged-in site session: the session cookie plus ``New-Api-User: <user id>``."""

    session: str = field(repr=False)
    user_id: str
    cookie_name: str = "session"


def auth_from_env() -> BearerAuth | PlaygroundAuth:
    """The credentials the environment holds: ``COBABA_API_KEY``, else a playground
    session from ``COBABA_SESSION`` and ``COBABA_USER_ID`` (the site's logged-in path).

    Raises ConfigError when neither is set, or only half of a session is.
    """
    if os.environ.get(API_KEY_ENV, "").strip():
        return BearerAuth.from_env()
    session = os.environ.get(SESSION_ENV, "").strip()
    user = os.environ.get(USER_ID_ENV, "").strip()
    if session and user:
        return PlaygroundAuth(session=session, user_id=user)
    if session or user:
        missing = USER_ID_ENV if session else SESSION_ENV
        raise ConfigError(
            _(
                "{missing} is not set: a playground session needs both {session} (the"
                " site's session cookie) and {user} (your user id)"
            ).format(missing=missing, session=SESSION_ENV, user=USER_ID_ENV),
            code="missing_api_key",
        )
    raise ConfigError(
        _(
            "{env} is not set: export your CobabaAi key (or {session} and {user} for a"
            " logged-in playground session, or use --sim)"
        ).format(env=API_KEY_ENV, session=SESSION_ENV, user=USER_ID_ENV),
        code="missing_api_key",
    )


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds allowed per phase. ``submit`` and ``poll`` bound the wait for an answer."""

    connect: float = 10.0
    submit: float = 60.0
    poll: float = 30.0
    sync: float = 600.0  # replyType json, images/generations: the whole task runs inline
    pool: float = 60.0

    def for_read(self, read: float) -> httpx.Timeout:
        """An httpx timeout with this read (and write) limit."""
        return httpx.Timeout(connect=self.connect, read=read, write=read, pool=self.pool)


def origin_of(base_url: str) -> str:
    """The host root of ``base_url``: its trailing ``/v1`` (if any) cut off."""
    parts = urlsplit(base_url)
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return f"{parts.scheme}://{parts.netloc}{path}"


def check_base_url(base_url: str) -> str:
    """Normalise ``base_url`` (no trailing slash). Raises ConfigError if it is not http(s)."""
    url = base_url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"base URL must be an http(s) URL, got {redact(url)[:200]!r}")
    if parts.username or parts.password:
        raise ConfigError("base URL must not carry credentials")
    return url
