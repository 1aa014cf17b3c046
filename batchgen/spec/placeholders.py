"""``{variable}`` templates: prompts, string params and the output layout.

The syntax is Python's ``str.format`` reduced to plain names: ``{subject}`` is replaced
by the value of ``subject``, ``{{`` and ``}}`` are literal braces. Attribute and index
access, conversions and format specs (``{a.b}``, ``{a[0]}``, ``{a!r}``, ``{a:>5}``) are
refused, so a template can never reach into Python objects. Values are inserted as
they are; they are not templates themselves.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["NAME_PATTERN", "Template", "TemplateError", "parse_template"]

#: What a variable name (and so a placeholder) may look like.
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


class TemplateError(ValueError):
    """The text is not a valid template; the message says why, in user terms."""


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed template: literal ``chunks`` interleaved with field ``names``.

    ``chunks`` has one more element than ``names``; rendering joins
    ``chunks[0] + value(names[0]) + chunks[1] + ...``.
    """

    text: str
    chunks: tuple[str, ...]
    names: tuple[str, ...]

    @property
    def fields(self) -> frozenset[str]:
        """The distinct variable names the template uses."""
        return frozenset(self.names)

    def render(self, values: Mapping[str, str]) -> str:
        """The text with every placeholder replaced; raises KeyError for a missing name."""
        if not self.names:
            return self.chunks[0]
        out = [self.chunks[0]]
        for name, chunk in zip(self.names, self.chunks[1:], strict=True):
            out.append(values[name])
            out.append(chunk)
        return "".join(out)


@functools.lru_cache(maxsize=4096)
def parse_template(text: str) -> Template:
    """Parse ``text``; raises :class:`TemplateError` with a user-facing reason.

    Cached: the same prompt text is parsed once however many tasks use it.
    """
    chunks: list[str] = []
    names: list[str] = []
    literal: list[str] = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError:
        raise TemplateError(
            "unbalanced '{' or '}' (write '{{' or '}}' for a literal brace)"
        ) from None
    for literal_text, field, spec, conversion in parsed:
        literal.append(literal_text)
        if field is None:
            continue
        shown = (
            "{" + field + ("!" + conversion if conversion else "") + (":" + spec if spec else "")
        )
        shown += "}"
        if not field:
            raise TemplateError("empty placeholder {} (name a variable, e.g. {subject})")
        if conversion or spec:
            raise TemplateError(f"placeholder {shown} may not have a conversion or format")
        if not NAME_PATTERN.fullmatch(field):
            raise TemplateError(
                f"placeholder {shown} is not a plain variable name "
                "(letters, digits, '_' and '-'; no '.', '[' or numbers first)"
            )
        chunks.append("".join(literal))
        literal = []
        names.append(field)
    chunks.append("".join(literal))
    return Template(text, tuple(chunks), tuple(names))
