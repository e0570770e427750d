"""llmsim: how fast, how costly and on how many devices a Transformer trains or serves.

Public API for plugin authors and scripts. The names are imported on first use (PEP 562), so that
`import llmsim` stays cheap: the `llmsim` command (llmsim.entry) imports the CLI, and with it torch and
pandas, under its own Ctrl-C guard.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmsim.backend import Backend, Case, NoSettings, RunContext
    from llmsim.config import Scenario, load_scenario
    from llmsim.hookspecs import hookimpl
    from llmsim.results import Result

# public name -> the module that defines it
_PUBLIC = {"Backend": "llmsim.backend", "Case": "llmsim.backend", "NoSettings": "llmsim.backend",
           "RunContext": "llmsim.backend", "Scenario": "llmsim.config", "load_scenario": "llmsim.config",
           "hookimpl": "llmsim.hookspecs", "Result": "llmsim.results"}

__all__ = ["Backend", "Case", "NoSettings", "Result", "RunContext", "Scenario", "hookimpl", "load_scenario"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'llmsim' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
