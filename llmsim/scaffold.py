"""`llmsim new-plugin NAME`: write a complete third-party plugin package to start from.

The committed `plugins/example/` is exactly `llmsim new-plugin example` (a test keeps them equal), so
the tutorial in docs/plugins.md and the scaffold cannot drift apart.
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

from llmsim.errors import UsageError

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]{1,30}$")

_PYPROJECT = Template('''\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "llmsim-$name"
version = "0.1.0"
description = "An llmsim backend plugin: a modeled accelerator ($device)"
requires-python = ">=3.10"
dependencies = ["llmsim"]

[project.optional-dependencies]
test = ["pytest"]

# This line is what makes llmsim find the plugin: the `llmsim` entry-point group.
[project.entry-points.llmsim]
$name = "$package"

[tool.setuptools]
packages = ["$package"]
''')

_MODULE = Template('''\
"""llmsim plugin `$name`: a modeled backend for a made-up accelerator, `$device`.

It shows the two hooks most plugins need:
* `llmsim_hardware` adds the accelerator to the catalog (every number needs a `source`),
* `llmsim_backends` adds a backend that predicts a step on it.

The model is deliberately small: each traced op of the workload profile costs
max(FLOPs / (peak x efficiency), bytes / memory bandwidth), data parallelism divides the batch, and
the gradient all-reduce is not modeled. Replace `predict_step_s` with your own model.
"""

from __future__ import annotations

from pydantic import Field

from llmsim import Backend, Case, Result, hookimpl
from llmsim.results import fill_derived
from llmsim.strict import StrictModel
from llmsim.workload.profile import WorkloadProfile, profile_workload

DEVICE = "$device"


class Settings(StrictModel):
    """The `backends: {$name: ...}` block of a scenario: unknown keys, a YAML boolean or a quoted number
    for a number are errors, as in the rest of a scenario (StrictModel)."""

    devices: int = Field(1, ge=1, description="accelerators in the (data-parallel) group")
    efficiency: float = Field(0.5, gt=0, le=1, description="fraction of peak FLOP/s the kernels reach")


def predict_step_s(profile: WorkloadProfile, peak_flops: float, memory_bw: float, efficiency: float) -> float:
    """Sum over the traced op groups of a per-group roofline, for the whole batch on one device."""
    return sum(max(ops.flops / (peak_flops * efficiency), ops.bytes / memory_bw) for ops in profile.ops.values())


class ${cls}Backend(Backend):
    name = "$name"
    kind = "modeled"
    description = "modeled $device accelerator (plugin example)"
    Settings = Settings

    @classmethod
    def world_size(cls, settings: Settings) -> int:
        return settings.devices

    def run(self, case: Case, settings: Settings) -> Result:
        if case.strategy.model_parallel > 1:
            return case.result(self, hardware=DEVICE, status="skipped",
                               error="this example models data parallelism only (tp = pp = cp = 1)")
        device = self.context.catalog.device(DEVICE)
        peak = device.peak_flops.get(case.workload.dtype)
        if not peak:   # a skipped row says why, where a KeyError would fail the row
            return case.result(self, hardware=DEVICE, status="skipped",
                               error=f"$device has no peak FLOP/s for {case.workload.dtype} (its catalog entry's "
                                     f"peak_flops: {', '.join(device.peak_flops)})")
        profile = profile_workload(case.workload, case.sharing)
        one_device_s = predict_step_s(profile, peak, device.memory_bw_bytes_per_s, settings.efficiency)
        step_s = one_device_s / case.layout.dp
        energy_j = device.max_power_w * step_s * case.layout.world
        result = case.result(
            self, hardware=DEVICE, nodes=1, params=profile.params, trainable_params=profile.trainable_params,
            step_time_s=step_s, latency_p50_s=step_s, latency_p99_s=step_s,
            model_flops_per_step=profile.model_flops_per_step,
            mfu=profile.model_flops_per_step / step_s / case.layout.world / peak,
            energy_j_per_step=energy_j, energy_source="modeled",
            c_per_submodel_s=one_device_s, compute_time_s=step_s, comm_time_s=0.0, bubble_time_s=0.0,
            other_time_s=0.0)
        return fill_derived(result, case.workload.tokens_per_step)


@hookimpl
def llmsim_backends() -> list[type[Backend]]:
    return [${cls}Backend]


@hookimpl
def llmsim_hardware() -> list[dict]:
    return [{
        "name": DEVICE, "type": "device",
        "peak_flops": {"bfloat16": 100e12, "float16": 100e12, "float32": 25e12},
        "memory_bytes": 32e9, "memory_bw_bytes_per_s": 1.0e12, "idle_power_w": 40, "max_power_w": 250,
        "source": "made-up accelerator for the llmsim plugin tutorial (not real hardware)",
    }]
''')

_TEST = Template('''\
"""Tests of the `$name` plugin, with a fresh llmsim plugin manager (no installation needed)."""

from __future__ import annotations

import $package
from llmsim.backend import RunContext
from llmsim.config import parse_scenario
from llmsim.hardware import load_catalog
from llmsim.plugins import get_plugin_manager
from llmsim.registry import BackendRegistry
from llmsim.runner import plan_cases

SCENARIO = {
    "name": "plugin-test",
    "workload": {"model": {"preset": "tiny"}, "mode": "train", "batch": 4, "dtype": "bfloat16"},
    "strategies": [{"name": "dp2"}, {"name": "tp2", "tp": 2}],
    "backends": {"$name": {"devices": 2}},
}


def _manager():
    manager = get_plugin_manager(environ={"LLMSIM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    manager.register($package, name="$name")
    return manager


def test_backend_and_device_are_registered() -> None:
    manager = _manager()
    assert BackendRegistry.from_manager(manager).names == ["$name"]
    entries = [(p, e) for p, es in manager.call_each("llmsim_hardware") for e in es]
    assert "$device" in load_catalog(plugin_entries=entries).devices


def test_dp_case_is_predicted_and_tp_is_skipped() -> None:
    manager = _manager()
    registry = BackendRegistry.from_manager(manager)
    entries = [(p, e) for p, es in manager.call_each("llmsim_hardware") for e in es]
    context = RunContext(catalog=load_catalog(plugin_entries=entries))
    backend = registry.get("$name")(context)
    dp, tp = (backend.run(p.case, p.settings) for p in plan_cases(parse_scenario(SCENARIO), registry))
    assert dp.status == "ok" and dp.n_devices == 2 and dp.step_time_s > 0
    assert dp.scaling_efficiency == 1.0  # no communication modeled: ideal data parallelism
    assert tp.status == "skipped" and "data parallelism only" in tp.error
    # a dtype the device has no peak for: a skipped row that says so
    fp8 = plan_cases(parse_scenario({**SCENARIO, "workload": {**SCENARIO["workload"], "dtype": "float8"}}), registry)[0]
    row = backend.run(fp8.case, fp8.settings)
    assert row.status == "skipped" and "no peak FLOP/s for float8" in row.error
''')

_README = Template('''\
# llmsim-$name

An llmsim plugin: a modeled backend `$name` for a made-up accelerator `$device`, and the
accelerator's catalog entry. Generated by `llmsim new-plugin $name`; see llmsim's docs/plugins.md.

```bash
pip install -e .            # registers the entry point `$name` in the `llmsim` group
llmsim backends             # lists $name
pip install -e '.[test]' && pytest
```

In a scenario:

```yaml
backends:
  $name: {devices: 8, efficiency: 0.5}
```
''')


def plugin_files(name: str) -> dict[str, str]:
    """Relative path -> content of the plugin package for `name`."""
    if not NAME_PATTERN.match(name):
        raise UsageError("new-plugin", f"{name!r} is not a valid plugin name (lowercase letters, digits and '-', "
                          f"starting with a letter, 2-31 characters)")
    package = "llmsim_" + name.replace("-", "_")
    cls = "".join(part.capitalize() for part in name.split("-"))
    values = {"name": name, "package": package, "cls": cls, "device": f"{name}-npu"}
    return {
        "pyproject.toml": _PYPROJECT.substitute(values),
        f"{package}/__init__.py": _MODULE.substitute(values),
        f"tests/test_{package}.py": _TEST.substitute(values),
        "README.md": _README.substitute(values),
    }


def write_plugin(name: str, target: Path) -> Path:
    """Write the plugin package into `target` (which must not exist or be empty)."""
    if target.exists() and any(target.iterdir()):
        raise UsageError("new-plugin", f"{target} already exists and is not empty")
    for rel, content in plugin_files(name).items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    return target
