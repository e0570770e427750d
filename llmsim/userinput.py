"""The one path every text a user hands llmsim goes through: scenario, plan and catalog files, `--set`
values, a run folder's saved scenario. Each is parsed with YAML's safe loader (no tags, no code) under
three limits, and any failure is one `ScenarioError` line that names where (the file, or the `--set`
key) and what is wrong, never a traceback.

Why limits: the YAML composer, pydantic's validation and `json.dumps` of the resolved scenario all
recurse once (or more) per nesting level, so text nested thousands of levels deep (`[[[[...`) ended in
a RecursionError; aliases (`&a [*b, *b]`, each level doubling) let a few hundred bytes stand for
billions of values that validation and the run folder's copy would expand; and a file of hundreds of
megabytes took minutes and gigabytes before any message. The limits are far above what a real file
needs (the numbers below) and far below where those failures begin.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml

from llmsim.errors import ScenarioError

# The largest text llmsim reads from a user. The biggest file llmsim ships, its hardware catalog, is 14 kB;
# a scenario or plan is 1-2 kB. 4 MiB leaves room for a catalog of hundreds of devices.
MAX_TEXT_BYTES = 4 * 2**20
# The deepest nesting. The schema's deepest key is 6 levels (strategies[i].sharing.lora.targets[j]); the
# composer recurses twice per level and Python's default recursion limit is 1000 frames
# (sys.getrecursionlimit), which pydantic and json share with it.
MAX_DEPTH = 64
# The most values (scalars, lists, mappings) the text may stand for once aliases are expanded. A scenario
# has about a hundred; the catalog about 600.
MAX_VALUES = 100_000


class _Limited(yaml.SafeLoader):
    """The safe loader, refusing to compose nodes deeper than MAX_DEPTH (it composes recursively) and to
    construct a mapping that repeats a key (PyYAML keeps the last silently; YAML 1.2 section 3.2.1.1 says
    the keys of a mapping are unique)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        if self._depth > MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise _TooDeep(mark)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # Before SafeConstructor's flatten_mapping folds in merge keys (`<<: *base`): a key the mapping
        # states itself may override a merged one, that is what merging is for; stating it twice may not.
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Mark] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:  # an unhashable key: SafeConstructor reports it below
                    continue
                if first is not key_node.start_mark:
                    raise _Duplicate(key_node.start_mark, key, first)
        return super().construct_mapping(node, deep)


# YAML 1.2's float (core schema, section 10.3.2): PyYAML resolves YAML 1.1, whose floats need a dot, so `1e9` or
# `5e-3` would stay text. Added to this loader's own copy of the resolvers (add_implicit_resolver copies the
# class table on first use), so yaml.SafeLoader is left as it is.
_Limited.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


class _TooDeep(Exception):
    def __init__(self, mark: yaml.Mark) -> None:
        self.mark = mark


class _Duplicate(Exception):
    def __init__(self, mark: yaml.Mark, key: Any, first: yaml.Mark) -> None:
        self.mark = mark
        self.key = key
        self.first = first


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _expanded(root: yaml.Node) -> tuple[int, int, yaml.Node | None]:
    """(values, depth, recursive) of the node graph with every alias expanded, without expanding it: each
    node's count and depth are computed once (post-order, an explicit stack: no recursion) and reused
    wherever an alias points at it. `recursive`: the anchored node an alias inside it refers to (an infinite
    value), whose mark says where it is (trial 41: the error named the document's first line), else None."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            kids = _children(node)
            size[key] = min(1 + sum(size[id(k)] for k in kids), MAX_VALUES + 1)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            continue
        if key in size:
            continue
        if key in on_path:
            return 0, 0, node
        on_path.add(key)
        stack.append((node, True))
        for kid in _children(node):
            if id(kid) in on_path:
                return 0, 0, kid
            if id(kid) not in size:
                stack.append((kid, False))
    return size[id(root)], depth[id(root)], None


def parse_yaml(text: str, file: str | None, key: str | None = None, what: str = "not valid YAML") -> Any:
    """The value `text` stands for, or a one-line ScenarioError naming `file` and `key`.

    `what` starts the message of a syntax error (a `--set` value says which value it was)."""
    size = len(text.encode("utf-8", errors="replace"))
    if size > MAX_TEXT_BYTES:
        raise ScenarioError(file, key, f"{size:,} bytes is too large (at most {MAX_TEXT_BYTES:,}; a scenario is "
                                       f"a few kB)")
    loader = None
    try:
        loader = _Limited(text)   # its reader refuses a control character here, before any parsing
        node = loader.get_single_node()
        if node is None:
            return None
        values, depth, recursive = _expanded(node)
        if recursive is not None:
            raise ScenarioError(file, key, f"line {recursive.start_mark.line + 1}: an alias refers to the value it "
                                           f"is inside (a recursive value)")
        if depth > MAX_DEPTH:
            raise ScenarioError(file, key, f"nested more than {MAX_DEPTH} levels deep once aliases are expanded "
                                           f"(a scenario is about 6)")
        if values > MAX_VALUES:
            raise ScenarioError(file, key, f"stands for more than {MAX_VALUES:,} values once aliases are expanded "
                                           f"(a scenario has about a hundred)")
        return loader.construct_document(node)
    except _Duplicate as exc:
        one = key is not None and "\n" not in text.strip()  # a --set value is one line: its column says where
        where = f"column {exc.mark.column + 1}" if one else f"line {exc.mark.line + 1}"
        first = f"column {exc.first.column + 1}" if one else f"line {exc.first.line + 1}"
        raise ScenarioError(file, key, f"{where}: duplicate key {exc.key!r} (first at {first}); a key may appear "
                                       f"once in a mapping (YAML would silently keep the last)") from None
    except _TooDeep as exc:
        raise ScenarioError(file, key, f"line {exc.mark.line + 1}, column {exc.mark.column + 1}: nested more "
                                       f"than {MAX_DEPTH} levels deep (a scenario is about 6)") from None
    except yaml.reader.ReaderError as exc:   # a control character (NUL, BEL...): YAML allows none (trial 40)
        before = text[:exc.position]
        line, column = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
        where = f"column {column}" if key is not None and "\n" not in text.strip() else f"line {line}, column {column}"
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise ScenarioError(file, key, f"{what}: {where}: control character {code:#04x}; YAML text allows tab, "
                                       f"newline and printable characters only") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        # a --set value (a key given) is one line: its column says where; a file's error names its line too, even
        # in a one-line file (its end is on line 2: "column 1" alone pointed at nothing)
        line = f"line {mark.line + 1}, " if mark and (key is None or "\n" in text.strip()) else ""
        where = f"{line}column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScenarioError(file, key, f"{what}: {where}{problem}") from None
    finally:
        if loader is not None:
            loader.dispose()


def not_a_regular_file(path: str | Path) -> str | None:
    """Why `path` is not a file to read, where it is a FIFO, a socket or a device, else None (a missing file or a
    folder is open()'s own error). Opening a FIFO blocks until something writes to it (trial 31: `llmsim validate
    FIFO` waited forever), so these are refused before any open."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a FIFO, not a regular file: give a file (a pipe would be waited on)"
    what = "a socket" if stat.S_ISSOCK(mode) else "a device"
    return f"{what}, not a regular file: give a file"


def read_text(path: str | Path) -> str:
    """A user's text file, or a one-line ScenarioError (missing, unreadable, too large, not UTF-8, a FIFO or a
    device)."""
    file = str(path)
    special = not_a_regular_file(path)
    if special:
        raise ScenarioError(file, None, special)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_TEXT_BYTES + 1)
    except OSError as exc:
        raise ScenarioError(file, None, f"cannot read file: {exc.strerror or exc}") from None
    if len(raw) > MAX_TEXT_BYTES:
        raise ScenarioError(file, None, f"more than {MAX_TEXT_BYTES:,} bytes is too large (a scenario is a few "
                                        f"kB)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(file, None, f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                                        f"{exc.start}); a scenario, plan or catalog file is YAML text") from None


def read_yaml(path: str | Path, top_keys: str = "name:, workload:, ...") -> dict[str, Any]:
    """A user's YAML file that must hold a mapping (scenario, plan, catalog), as a ScenarioError on failure;
    `top_keys` says which keys the mapping should have (a catalog's: entries:)."""
    text = read_text(path)
    data = parse_yaml(text, str(path))
    if not isinstance(data, dict):
        if isinstance(data, list) and data and all(isinstance(e, dict) and "type" in e for e in data):
            top_keys = "entries: — a hardware catalog file lists its devices and links under entries:"
        blank = all(not line.strip() or line.lstrip().startswith("#") for line in text.splitlines())
        empty = ("" if data is not None else "the file is empty (or holds only comments); " if blank
                 else "the file holds no value (null); ")
        raise ScenarioError(str(path), None, f"{empty}expected a mapping at the top level ({top_keys})")
    return data


_SEGMENT = re.compile(r"[^.\[\]=\s]+")     # a key: anything but the path's own punctuation and blanks
_INDEX = re.compile(r"\[(-?\d+)\]")


def override_path(key: str, file: str | None) -> list[str | int]:
    """The parts of a `--set` key (`strategies[0].tp` -> ['strategies', 0, 'tp']), or a one-line
    ScenarioError that says what is wrong where: an empty segment (`workload..batch`, a leading or
    trailing dot), a bracket that is not `[N]` or `[-N]`. Whether an index exists is checked where it is used
    (apply_overrides), which refuses a negative one too, naming the index to write."""
    parts: list[str | int] = []
    pos = 0
    space = next((i for i, c in enumerate(key) if c.isspace()), None)
    if space is not None:   # `--set ' serving.requests = 5'` (trial 28): said 'empty part of the key'
        raise ScenarioError(file, key, f"--set: a space at column {space + 1}: a key has none (write KEY=VALUE with "
                                       f"no space in or around the key, e.g. --set serving.requests=5)")
    while pos < len(key):
        if key[pos] == "[":
            m = _INDEX.match(key, pos)
            if m is None:
                raise ScenarioError(file, key, f"--set: {key[pos:]!r} at column {pos + 1}: a list index is [N], a "
                                               f"whole number from 0 (e.g. strategies[0].tp)")
            if not parts:
                raise ScenarioError(file, key, "--set: a key starts with a name, not a list index (e.g. "
                                               "strategies[0].tp)")
            parts.append(int(m.group(1)))  # a negative one is refused where the list's length is known
            pos = m.end()
            continue
        if parts:  # after a name or an index: a dot, then the next name
            if key[pos] != ".":
                raise ScenarioError(file, key, f"--set: {key[pos]!r} at column {pos + 1}: expected '.' or '[' "
                                               f"between the parts of a key (e.g. strategies[0].tp)")
            pos += 1
        m = _SEGMENT.match(key, pos)
        if m is None:
            what = "the end" if pos == len(key) else f"{key[pos]!r}"
            raise ScenarioError(file, key, f"--set: empty part of the key at column {pos + 1} (before {what}); "
                                           f"each part between dots is a name (e.g. workload.batch)")
        parts.append(m.group())
        pos = m.end()
    if not parts:
        raise ScenarioError(file, key or None, "--set: empty key (e.g. --set workload.batch=16)")
    return parts
