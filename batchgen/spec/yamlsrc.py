"""Safe YAML loading that remembers where every value came from.

The spec validator must point at the exact line and column of a bad value, and it must
survive hostile files. So this module never lets PyYAML construct Python objects: it
only *composes* the node tree with :class:`yaml.SafeLoader`, then builds plain values
(``dict``, ``list``, ``str``, ``int``, ``float``, ``bool``, ``None``) itself, which lets
it

* map every node path (a tuple of keys and indices) to its 1-based line and column;
* count the nodes it builds, aliases included, so a "billion laughs" file stops after
  ``max_nodes`` nodes instead of eating memory;
* refuse duplicate keys, and tags beyond the YAML core ones (``!!python/object`` and
  friends) at their line;
* read scalars the YAML 1.2 way where YAML 1.1 surprises people: ``16:9`` is the
  string ``"16:9"`` (not the sexagesimal integer 969), ``yes``/``no``/``on``/``off``
  are strings, dates stay strings, ``1e3`` is a number;
* keep every mapping key as the text written (``1K:`` is ``"1K"``, ``on:`` is ``"on"``).

Every problem is reported as a :class:`~batchgen.errors.SpecIssue` inside a
:class:`~batchgen.errors.SpecError`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from batchgen.errors import SpecError, SpecIssue

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_NODES",
    "NodePath",
    "YamlDocument",
    "load_yaml_file",
    "parse_yaml",
]

#: Default cap on the size of a spec file (1 MiB): specs are small, data lives in row files.
MAX_BYTES = 1024 * 1024
#: Default cap on built nodes, aliases counted each time they are used.
MAX_NODES = 200_000
#: Deeper nesting than this is refused (it also stops recursive aliases).
MAX_DEPTH = 64

NodePath = tuple[str | int, ...]

_CORE = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_CORE + t for t in ("str", "int", "float", "bool", "null"))
_TIMESTAMP, _SEQ, _MAP, _MERGE = (_CORE + t for t in ("timestamp", "seq", "map", "merge"))
_SCALAR_TAGS = frozenset({_STR, _INT, _FLOAT, _BOOL, _NULL, _TIMESTAMP})
_YAML12_BOOLS = frozenset({"true", "True", "TRUE", "false", "False", "FALSE"})
# YAML 1.2 floats such as 1e3 that YAML 1.1 (and so PyYAML) reads as strings.
_YAML12_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+")


@dataclass(frozen=True, slots=True)
class YamlDocument:
    """A parsed YAML file: plain ``data`` plus the position of every node in it.

    ``value_marks`` maps a node path to the (line, column) where its value starts;
    ``key_marks`` maps the path of a mapping entry to where its key is written.
    Lines and columns are 1-based.
    """

    file: str
    text: str
    data: object
    value_marks: Mapping[NodePath, tuple[int, int]]
    key_marks: Mapping[NodePath, tuple[int, int]]

    def value_position(self, path: NodePath) -> tuple[int, int]:
        """Where the value at ``path`` starts, else its nearest ancestor's (1, 1 at worst)."""
        for end in range(len(path), -1, -1):
            mark = self.value_marks.get(path[:end])
            if mark is not None:
                return mark
        return (1, 1)

    def key_position(self, path: NodePath) -> tuple[int, int]:
        """Where the key of the entry at ``path`` is written, else :meth:`value_position`."""
        mark = self.key_marks.get(path)
        return mark if mark is not None else self.value_position(path)

    def issue(
        self, path: NodePath, message: str, *, at_key: bool = False, severity: str = "error"
    ) -> SpecIssue:
        """A :class:`SpecIssue` located at ``path`` (its key if ``at_key``) in this file."""
        line, column = self.key_position(path) if at_key else self.value_position(path)
        return SpecIssue(self.file, line, column, message, severity)


def load_yaml_file(
    path: str | os.PathLike[str],
    *,
    display_name: str | None = None,
    max_bytes: int = MAX_BYTES,
    max_nodes: int = MAX_NODES,
) -> YamlDocument:
    """Read and parse the YAML file at ``path``.

    ``display_name`` is the file name used in messages (default: ``path`` as given).
    Raises :class:`SpecError` if the file is missing, larger than ``max_bytes``, not
    UTF-8, or not acceptable YAML (see :func:`parse_yaml`). The size is checked before
    anything is read, so an oversized file is refused at once.
    """
    name = display_name if display_name is not None else os.fspath(path)
    file = Path(path)
    try:
        size = file.stat().st_size
        if size > max_bytes:
            raise SpecError([_too_big(name, size, max_bytes)])
        with file.open("rb") as handle:
            # Read one byte more than allowed: the file may have grown since stat().
            raw = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise SpecError([SpecIssue(name, 1, 1, "file not found")]) from None
    except IsADirectoryError:
        raise SpecError([SpecIssue(name, 1, 1, "is a folder, not a spec file")]) from None
    except OSError as exc:
        raise SpecError([SpecIssue(name, 1, 1, f"cannot read: {exc.strerror}")]) from None
    if len(raw) > max_bytes:
        raise SpecError([_too_big(name, len(raw), max_bytes)])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpecError([SpecIssue(name, line, column, "not valid UTF-8 text")]) from None
    return parse_yaml(text, file=name, max_nodes=max_nodes)


def parse_yaml(text: str, *, file: str = "<string>", max_nodes: int = MAX_NODES) -> YamlDocument:
    """Parse one YAML document from ``text`` into plain values with positions.

    An empty document gives ``data=None``. Raises :class:`SpecError` listing every
    duplicate key and refused tag, or the single syntax error, nesting or size problem
    that stopped parsing.
    """
    try:
        # SafeLoader only composes here; construction is ours (see _Builder).
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        problem = exc.problem or "invalid YAML"
        if exc.context and exc.context not in problem:
            problem = f"{exc.context}: {problem}"
        start = exc.context_mark
        if start is not None and exc.context and start.line + 1 != line:
            # "while scanning a quoted scalar" at the end of the file: say where it began.
            what = exc.context.removeprefix("while scanning ").removeprefix("while parsing ")
            what = what.removeprefix("a ").removeprefix("an ")
            problem += f" (the {what} starts at line {start.line + 1})"
        raise SpecError([SpecIssue(file, line, column, f"YAML syntax error: {problem}")]) from None
    except yaml.YAMLError as exc:
        raise SpecError([SpecIssue(file, 1, 1, f"YAML error: {exc}")]) from None
    except RecursionError:
        raise SpecError([SpecIssue(file, 1, 1, "YAML nested too deeply")]) from None
    builder = _Builder(file, max_nodes)
    data = None if root is None else builder.build(root, (), 0)
    if builder.issues:
        raise SpecError(sorted(builder.issues, key=lambda i: (i.line, i.column)))
    return YamlDocument(file, text, data, builder.value_marks, builder.key_marks)


def _too_big(name: str, size: int, limit: int) -> SpecIssue:
    return SpecIssue(
        name,
        1,
        1,
        f"file is {size:,} bytes, over the {limit:,}-byte limit for specs; "
        "put long lists in a row file (`from: prompts.txt`)",
    )


def _mark(node: Node) -> tuple[int, int]:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_CORE) :] if tag.startswith(_CORE) else tag


class _Fatal(Exception):
    """Stops building: the document is too large or too deep to continue."""


class _Builder:
    """Builds plain values from a composed node tree, recording positions as it goes."""

    def __init__(self, file: str, max_nodes: int) -> None:
        self.file = file
        self.max_nodes = max_nodes
        self.count = 0
        self.issues: list[SpecIssue] = []
        self.value_marks: dict[NodePath, tuple[int, int]] = {}
        self.key_marks: dict[NodePath, tuple[int, int]] = {}
        self._resolver = Resolver()
        # Only its scalar conversions are used (int/float/bool parsing); they never recurse.
        self._scalars = SafeConstructor()

    def build(self, node: Node, path: NodePath, depth: int) -> object:
        try:
            return self._node(node, path, depth)
        except _Fatal:
            return None

    def _error(self, node: Node, message: str) -> None:
        line, column = _mark(node)
        self.issues.append(SpecIssue(self.file, line, column, message))

    def _fatal(self, node: Node, message: str) -> _Fatal:
        self._error(node, message)
        return _Fatal()

    def _node(self, node: Node, path: NodePath, depth: int) -> object:
        # Aliases are shared nodes: each use is built (and counted) again, so expansion
        # bombs hit the cap after max_nodes steps, long before memory is at risk.
        self.count += 1
        if self.count > self.max_nodes:
            raise self._fatal(
                node,
                f"the document expands to more than {self.max_nodes:,} values "
                "(anchors and aliases included); put long lists in a row file",
            )
        if depth > MAX_DEPTH:
            raise self._fatal(node, f"nested more than {MAX_DEPTH} levels deep (recursive alias?)")
        self.value_marks[path] = _mark(node)
        if isinstance(node, ScalarNode):
            return self._scalar(node)
        if isinstance(node, SequenceNode):
            if node.tag != _SEQ:
                self._error(node, _tag_message(node.tag))
                return None
            return [self._node(child, (*path, i), depth + 1) for i, child in enumerate(node.value)]
        if isinstance(node, MappingNode):
            if node.tag != _MAP:
                self._error(node, _tag_message(node.tag))
                return None
            return self._mapping(node, path, depth)
        raise self._fatal(node, "unsupported YAML node")  # pragma: no cover - PyYAML has 3 kinds

    def _mapping(self, node: MappingNode, path: NodePath, depth: int) -> dict[str, object]:
        result: dict[str, object] = {}
        for key, key_node, value_node in self._pairs(node, depth, explicit=True):
            self.key_marks[(*path, key)] = _mark(key_node)
            result[key] = self._node(value_node, (*path, key), depth + 1)
        return result

    def _pairs(
        self, node: MappingNode, depth: int, *, explicit: bool
    ) -> list[tuple[str, Node, Node]]:
        """The entries of ``node`` with YAML merge keys (``<<``) flattened.

        Explicit keys win over merged ones, and earlier merged mappings over later ones.
        Duplicates are reported only among keys written in ``node`` itself.
        """
        if depth > MAX_DEPTH:
            raise self._fatal(node, f"nested more than {MAX_DEPTH} levels deep (recursive alias?)")
        pairs: list[tuple[str, Node, Node]] = []
        first_line: dict[str, int] = {}
        merges: list[Node] = []
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag == _MERGE:
                merges.extend(
                    value_node.value if isinstance(value_node, SequenceNode) else [value_node]
                )
                continue
            if not isinstance(key_node, ScalarNode):
                self._error(key_node, "mapping keys must be plain strings")
                continue
            if key_node.tag not in _SCALAR_TAGS:
                self._error(key_node, _tag_message(key_node.tag))
                continue
            key = str(key_node.value)
            if key in first_line:
                if explicit:
                    self._error(
                        key_node, f"duplicate key {key!r} (first defined at line {first_line[key]})"
                    )
                continue
            first_line[key] = _mark(key_node)[0]
            pairs.append((key, key_node, value_node))
        for source in merges:
            self.count += 1  # merged entries are re-used nodes too: keep bombs bounded
            if self.count > self.max_nodes:
                raise self._fatal(
                    source, f"the document expands to more than {self.max_nodes:,} values"
                )
            if not isinstance(source, MappingNode) or source.tag != _MAP:
                self._error(source, "a merge key (<<) needs a mapping or a list of mappings")
                continue
            for key, key_node, value_node in self._pairs(source, depth + 1, explicit=False):
                if key not in first_line:
                    first_line[key] = _mark(key_node)[0]
                    pairs.append((key, key_node, value_node))
        return pairs

    def _implicit_tag(self, text: str) -> str:
        """The tag PyYAML would give ``text`` written plain and untagged."""
        tag: str = self._resolver.resolve(ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]  # PyYAML stubs leave it untyped
        return tag

    def _scalar(self, node: ScalarNode) -> object:
        tag, text = node.tag, str(node.value)
        if tag not in _SCALAR_TAGS:
            self._error(node, _tag_message(tag))
            return None
        implicit = node.style is None and tag == self._implicit_tag(text)
        if implicit:
            # YAML 1.1 reads 16:9 as 969, "yes" as True and dates as datetimes; a job
            # spec means the text in each case (as YAML 1.2 does).
            if tag == _BOOL and text not in _YAML12_BOOLS:
                return text
            if tag in (_INT, _FLOAT) and ":" in text:
                return text
            if tag == _STR and _YAML12_FLOAT.fullmatch(text):
                return float(text)
        if tag in (_STR, _TIMESTAMP):
            return text
        try:
            if tag == _NULL:
                return None
            if tag == _BOOL:
                return bool(self._scalars.construct_yaml_bool(node))
            if tag == _INT:
                return int(self._scalars.construct_yaml_int(node))
            return float(self._scalars.construct_yaml_float(node))
        except (ValueError, KeyError, ConstructorError):
            self._error(node, f"{text!r} is not a valid {_short_tag(tag)} value")
            return None


def _tag_message(tag: str) -> str:
    return (
        f"tag {_short_tag(tag)!r} is not allowed: specs use plain YAML "
        "(strings, numbers, booleans, null, lists and mappings)"
    )
