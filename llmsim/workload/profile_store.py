"""Workload profiles kept on disk between runs, so that a plan whose workload was profiled before skips torch.

A plan prices its candidates from one `WorkloadProfile` (llmsim.workload.profile), traced on the meta device
in ~3 s of a 10 s plan on a 2-core host, and most of that is imports, not tracing: torch (~1.5 s) and
torch._dynamo (~1.4 s, which the trace pulls in: llmsim.workload.trace). The profile is a pure function of
the workload, the sharing choice, llmsim's code and torch's, so it is kept under `~/.cache/llmsim/profiles/`
(`$XDG_CACHE_HOME`, as the host probes: llmsim.measure.host_probes) keyed by all four:

* the workload (`Workload.model_dump_json`: every field, the model's included) and the sharing choice (its repr);
* llmsim's code: a SHA-256 of every `.py` file of the installed llmsim package (~140 files, ~10 ms), so any
  edit to the model, the step, the tracer or the depth scaling (or anything else) makes a new key;
* torch's version (its distribution metadata, read without importing torch) and Python's major.minor.

Read back, a profile is the one traced: JSON keeps every int and float exactly (repr round-trips) and the
order of `ops`, which the cost model sums in (tests/workload/test_profile_store.py). A file that cannot be
read or written, was cut short, or whose values no longer match the digest written with them (edited by hand)
only costs the trace, and is written again. `LLMSIM_PROFILE_CACHE` = 0, false, off or no turns the store off
(a cold run's timing); 1, true, on, yes or unset leaves it on; anything else is a one-line error (exit 2).
Files are never pruned: each edit of llmsim's sources makes a new key, and a file is ~2.5 KB; delete the
folder to reclaim them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from llmsim.config import SharingChoice, Workload
from llmsim.environment import cache_dir
from llmsim.errors import LLMSimError
from llmsim.workload.profile_data import OpTotals, WorkloadProfile

# The file layout below; a change of it is a change of key. 2: with the profile's digest; 3: the profile has
# activation_bytes_in_layers, and allocations no longer count as bytes moved (the code digest alone would do;
# a format 2 file read by from_json would take 0 for the new field); 4: each op row ends with engine_bytes.
FORMAT = 4
ENV_SWITCH = "LLMSIM_PROFILE_CACHE"  # off: neither read nor write
SWITCH_OFF = ("0", "false", "off", "no")
SWITCH_ON = ("", "1", "true", "on", "yes")


def store_dir() -> Path:
    """Where profiles are kept: $XDG_CACHE_HOME/llmsim/profiles (default ~/.cache/llmsim/profiles)."""
    return cache_dir() / "profiles"


def enabled() -> bool:
    """Whether the store is read and written (`LLMSIM_PROFILE_CACHE`, unset: on).

    Raises LLMSimError (exit 2, one line) for a value that is neither on nor off."""
    value = os.environ.get(ENV_SWITCH, "1").strip().lower()
    if value in SWITCH_OFF:
        return False
    if value in SWITCH_ON:
        return True
    raise LLMSimError(f"{ENV_SWITCH}={os.environ[ENV_SWITCH]!r}: allowed: {', '.join(SWITCH_ON[1:])} (on), "
                      f"{', '.join(SWITCH_OFF)} (off)")


@functools.cache
def code_digest() -> str:
    """SHA-256 of llmsim's own sources (every .py file under the package, by relative path), once per process."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def _torch_version() -> str:
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "unknown"


def profile_key(workload: Workload, sharing: SharingChoice, recipe: str = "") -> str:
    """Everything a traced profile depends on (module docstring), as one string; `recipe` names the caller's way
    of making it (the planner's and the serving reference's differ), so two callers never read each other's."""
    return json.dumps({"format": FORMAT, "code": code_digest(), "torch": _torch_version(),
                       "python": f"{sys.version_info[0]}.{sys.version_info[1]}", "recipe": recipe,
                       "workload": workload.model_dump_json(), "sharing": repr(sharing)}, sort_keys=True)


def to_json(profile: WorkloadProfile) -> dict:
    """The profile as JSON values: its scalar fields, and `ops` as a list in its own order."""
    out = {f.name: getattr(profile, f.name) for f in dataclasses.fields(profile) if f.name != "ops"}
    out["ops"] = [[*key, t.flops, t.bytes, t.count, t.fused_bytes, t.engine_bytes] for key, t in profile.ops.items()]
    return out


def _digest(profile: object) -> str:
    """SHA-256 of a profile's JSON values as written: a file whose numbers were changed after it was written
    (by hand, or a partial copy) no longer matches and is traced again, never priced."""
    return hashlib.sha256(json.dumps(profile, sort_keys=True).encode()).hexdigest()


# JSON's types of each scalar field of a profile as to_json writes them (an int field is a JSON integer: no bool)
_FIELD_TYPES = {f.name: (str,) if f.type in ("str", str) else (int,)
                for f in dataclasses.fields(WorkloadProfile) if f.name != "ops"}


def _typed(value: object, types: tuple[type, ...]) -> bool:
    return isinstance(value, types) and not isinstance(value, bool)


def from_json(data: dict) -> WorkloadProfile:
    """`to_json`'s inverse: the same values, the same types, `ops` in the same order. TypeError for a value of
    another type than to_json writes (a file edited by hand whose digest was made to match): read as damaged."""
    fields = dict(data)
    rows = fields.pop("ops")
    if not all(k in _FIELD_TYPES and _typed(v, _FIELD_TYPES[k]) for k, v in fields.items()):
        raise TypeError("a stored profile field of another type than written")
    if not all(isinstance(r, list) and len(r) == 8 and all(isinstance(x, str) for x in r[:3])
               and all(_typed(x, (int, float)) for x in r[3:6])
               and all(x is None or _typed(x, (int, float)) for x in r[6:]) for r in rows):
        raise TypeError("a stored profile operator row of another shape than written")
    ops = {(phase, region, kind): OpTotals(flops=flops, bytes=nbytes, count=count, fused_bytes=fused,
                                           engine_bytes=engine)
           for phase, region, kind, flops, nbytes, count, fused, engine in rows}
    return WorkloadProfile(**fields, ops=ops)


def _path(key: str, directory: Path | None) -> Path:
    """The file of `key` under `directory` (default `store_dir()`): named by a hash of the key."""
    return (directory or store_dir()) / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def read_profile(workload: Workload, sharing: SharingChoice, directory: Path | None = None,
                 recipe: str = "") -> WorkloadProfile | None:
    """The profile of (workload, sharing) made by `recipe` (profile_key) kept under `directory` (default
    `store_dir()`); None when the store is off (`enabled`) or holds none that can be used (absent, damaged, edited,
    another key's: the file's key is checked whole, not only its hash in the name)."""
    if not enabled():
        return None
    key = profile_key(workload, sharing, recipe)
    try:
        data = json.loads(_path(key, directory).read_text())
        if data["key"] == key and data["digest"] == _digest(data["profile"]):
            return from_json(data["profile"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # absent, damaged, edited or another key's: the caller traces it
    return None


def keep_profile(workload: Workload, sharing: SharingChoice, profile: WorkloadProfile,
                 directory: Path | None = None, recipe: str = "") -> None:
    """Keep a profile of (workload, sharing) traced by `recipe` under `directory` (default `store_dir()`) for the
    next run; nothing when the store is off. A folder that cannot be written only costs the next run the trace."""
    if not enabled():
        return
    key = profile_key(workload, sharing, recipe)
    path = _path(key, directory)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        stored = to_json(profile)
        tmp.write_text(json.dumps({"key": key, "digest": _digest(stored), "profile": stored}))
        tmp.replace(path)  # atomic: two plans writing at once never leave half a file
    except OSError:  # a read-only home, a full disk, a folder where the file goes: only costs the next run the trace
        try:
            tmp.unlink(missing_ok=True)  # no half-written or orphaned temporary file left behind
        except OSError:
            pass


def stored_profile(workload: Workload, sharing: SharingChoice, make: Callable[[], WorkloadProfile],
                   directory: Path | None = None, recipe: str = "") -> WorkloadProfile:
    """The profile of (workload, sharing) made by `recipe` kept under `directory` (default `store_dir()`:
    `read_profile`), else `make()`'s, then kept (`keep_profile`). Off (`enabled`): `make()`."""
    got = read_profile(workload, sharing, directory, recipe)
    if got is not None:
        return got
    profile = make()
    keep_profile(workload, sharing, profile, directory, recipe)
    return profile
