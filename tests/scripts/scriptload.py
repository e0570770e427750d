"""Load a file of scripts/ as a module for its tests: the scripts are run as programs, not installed."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from tests.conftest import REPO


def load_script(file_name: str, module_name: str | None = None) -> ModuleType:
    """scripts/`file_name` loaded as module `module_name` (default: the file's stem), registered in sys.modules
    (dataclasses look their module up by name). A test file that loads the same script under a name of its own
    gets a module of its own."""
    spec = importlib.util.spec_from_file_location(module_name or file_name.removesuffix(".py"),
                                                  REPO / "scripts" / file_name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
