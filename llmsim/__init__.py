"""llmsim: how fast, how costly and on how many devices a Transformer trains or serves.

Public API for plugin authors and scripts.
"""

from llmsim.backend import Backend, Case, NoSettings, RunContext
from llmsim.config import Scenario, load_scenario
from llmsim.hookspecs import hookimpl
from llmsim.results import Result

__all__ = ["Backend", "Case", "NoSettings", "Result", "RunContext", "Scenario", "hookimpl", "load_scenario"]
__version__ = "0.1.0"
