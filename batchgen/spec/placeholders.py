"""``{variable}`` templates: prompts, string params and the output layout.

The syntax is Python's ``str.format`` reduced to plain names: ``{subject}`` is replaced
by the value of ``subject``, ``{{`` and ``}}`` are literal braces. A name is any Python
identifier (``风格`` as well as ``style``), where ``-`` may also follow the first
character; like Python, batchgen reads it in its NFKC form, so ``{style}`` written in
full-width letters (U+FF53 U+FF54 ...) is ``{style}`` (see :func:`variable_name`).
Attribute and index access, conversions and format specs (``{a.b}``, ``{a[0]}``,
``{a!r}``, ``{a:>5}``) are refused, so a template can never reach into Python objects.
Values are inserted as they are; they are not templates themselves.
"""

from __future__ import annotations

import functools
import string
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

from batchgen.i18n import _

__all__ = ["Template", "TemplateError", "parse_template", "variable_name"]


def variable_name(text: str) -> str | None:
    """The variable ``text`` names, in NFKC form, or None when it cannot name one.

    A name is a Python identifier (``str.isidentifier``: letters of any script, digits,
    ``_``; not a digit first) in which ``-`` may also appear after the first character,
    as batchgen has always allowed. It is checked as written and returned normalised
    the way Python normalises identifiers, so two spellings of one name are one
    variable. ASCII names are their own NFKC form: the names of existing specs, and so
    their tasks, do not change.
    """
    if not text or text[0] == "-" or not text.replace("-", "_").isidentifier():
        return None
    name = unicodedata.normalize("NFKC", text)
    # NFKC can, in rare cases, leave the identifier alphabet (Python refuses those too).
    return name if name[0] != "-" and name.replace("-", "_").isidentifier() else None


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
            _("unbalanced '{' or '}' (write '{{' or '}}' for a literal brace)")
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
            raise TemplateError(_("empty placeholder {} (name a variable, e.g. {subject})"))
        if conversion or spec:
            raise TemplateError(
                _("placeholder {shown} may not have a conversion or format").format(shown=shown)
            )
        name = variable_name(field)
        if name is None:
            raise TemplateError(
                _(
                    "placeholder {shown} is not a plain variable name "
                    "(letters, digits, '_' and '-'; no '.', '[' or numbers first)"
                ).format(shown=shown)
            )
        chunks.append("".join(literal))
        literal = []
        names.append(name)
    chunks.append("".join(literal))
    return Template(text, tuple(chunks), tuple(names))
