"""Where two scenarios (as saved in run folders: nested mappings and lists of YAML values) differ, key path by key
path. `--resume` refuses a folder at the first difference (runner.check_resumable); a comparison report names them
all (report.compare.scenario_points)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

# A value written out longer than this is summarised (trial 42: a --resume refusal over a changed strategy list
# printed both lists in full, about 1.6 KB on one line)
MAX_VALUE_CHARS = 100


def differences(a: Any, b: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(key path, value in `a`, value in `b`) of every place where the two differ, in `a`'s key order then `b`'s
    new keys: `workload.batch`, `strategies[1].tp`. A key on one side only differs with None on the other; lists of
    one length are compared item by item, lists of two lengths as whole values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in dict.fromkeys([*a, *b]):
            yield from differences(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from differences(x, y, f"{path}[{i}]")
    elif a != b:
        yield path, a, b


def brief(value: Any, written: Callable[[Any], str] = repr) -> str:
    """`value` as `written` writes it (repr, or a YAML flow writer), or where that is longer than MAX_VALUE_CHARS a
    summary: a list's length and its items' names where they have a `name` ('3 entries: dp, tp, pp'), a mapping's
    length and keys, the names cut where they would pass the limit ('14 entries: s0, s1, … (12 more)'; trial 43:
    a cut of the sorted text read the same on both sides), else the text cut with '…'."""
    text = written(value)
    if len(text) <= MAX_VALUE_CHARS:
        return text
    if isinstance(value, list):
        names = [str(item["name"]) for item in value if isinstance(item, dict) and item.get("name") is not None]
        return _counted(len(value), "entry", "entries", names if len(names) == len(value) else [])
    if isinstance(value, dict):
        return _counted(len(value), "key", "keys", [str(k) for k in value])
    return text[:MAX_VALUE_CHARS - 1].rstrip() + "…"


def _counted(n: int, one: str, many: str, names: list[str]) -> str:
    """'14 entries: s0, s1, … (12 more)': the count, then as many names as fit in MAX_VALUE_CHARS."""
    head = f"{n} {one if n == 1 else many}"
    shown: list[str] = []
    for name in names:
        rest = len(names) - len(shown) - 1
        tail = f", … ({rest} more)" if rest else ""
        if len(f"{head}: {', '.join([*shown, name])}{tail}") > MAX_VALUE_CHARS:
            break
        shown.append(name)
    if not shown:
        return head
    more = len(names) - len(shown)
    return f"{head}: {', '.join(shown)}" + (f", … ({more} more)" if more else "")
