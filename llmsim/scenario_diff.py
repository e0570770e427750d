"""Where two scenarios (as saved in run folders: nested mappings and lists of YAML values) differ, key path by key
path. `--resume` refuses a folder at the first difference (runner.check_resumable); a comparison report names them
all (report.compare.scenario_points)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


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
