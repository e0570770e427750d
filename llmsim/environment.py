"""The environment record written beside every run, so numbers can be traced to a machine."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("llmsim", "torch", "pydantic", "pluggy", "pandas", "simpy", "nvidia-ml-py")


def cache_dir() -> Path:
    """Where llmsim keeps per-user files between runs (host probes, workload profiles): `$XDG_CACHE_HOME/llmsim`,
    else `~/.cache/llmsim`. An empty or relative XDG_CACHE_HOME is ignored, as the XDG Base Directory
    specification says ("If an implementation encounters a relative path in any of these variables it should
    consider the path invalid and ignore it"), so a stray value never writes into the working folder."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(base) if os.path.isabs(base) else Path.home() / ".cache") / "llmsim"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _cuda_available(torch: Any) -> bool:
    """torch.cuda.is_available(), False where a broken driver makes even that raise."""
    try:
        return bool(torch.cuda.is_available())
    except RuntimeError:
        return False


def environment_record() -> dict[str, Any]:
    import torch

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": _cuda_available(torch),
        "packages": {p: _version(p) for p in PACKAGES},
        "git_commit": _git_commit(),
    }
