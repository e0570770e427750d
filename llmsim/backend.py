"""What a backend is: the contract between the runner and every plugin, real or modeled."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from llmsim.config import SharingChoice, Strategy, Workload
from llmsim.hardware import Catalog, DeviceSpec, load_catalog
from llmsim.results import Result
from llmsim.serving.spec import ServingCase, ServingSpec
from llmsim.stages import describe_split
from llmsim.strategy import Layout


# The extras of a row whose case ran out of its time limit (Case.timed_out): the limit's scenario key and seconds.
TIMED_OUT_SETTING = "timed_out_setting"
TIMED_OUT_AFTER_S = "timed_out_after_s"


class NoSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Case(BaseModel):
    """One unit of work for one backend: a workload under one strategy, already validated and laid out."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    scenario: str
    name: str                     # strategy name plus any sweep suffix, e.g. "tp8@nodes=4"
    workload: Workload
    sharing: SharingChoice        # the strategy's parameter sharing, tie resolved
    strategy: Strategy
    layout: Layout
    seed: int = 0
    scenario_dir: Path = Path(".")
    serving: ServingCase | None = None   # a serving run at one rate (the scenario's serving: block)

    def result(self, backend: "Backend", **values: Any) -> Result:
        """A result row with every column this case already determines filled in.

        A metric the case does not define stays empty whatever the backend passes (NaN in results.csv; the
        summaries skip it): TTFT and TPOT exist only in decode, and TPOT, the time per output token *after
        the first*, only when a sequence generates two tokens or more. A serving case defines them
        as the means over its requests (ttft_mean_s, tpot_mean_s)."""
        s, lay, w = self.strategy, self.layout, self.workload
        if self.serving is not None:
            pass
        elif w.mode != "decode":
            values.update(ttft_s=None, tpot_s=None)
        elif w.decode_tokens < 2:
            values.update(tpot_s=None)
        base: dict[str, Any] = dict(
            scenario=self.scenario, case=self.name, backend=backend.name, kind=backend.kind,
            strategy=s.name, dp=lay.dp, tp=lay.tp, pp=lay.pp, cp=lay.cp, ep=lay.ep, etp=lay.etp, sp=s.sp, zero=s.zero,
            micro_batch=lay.micro_batch, microbatches=lay.microbatches, schedule=s.schedule,
            recompute=s.recompute, stage_layers=describe_split(lay.stage_layers) if lay.stage_layers else None,
            # a serving case's rows are mode serve, a skipped or failed one too (it said "train": trial 29)
            n_devices=lay.world, mode="serve" if self.serving is not None else w.mode, batch=w.batch,
            seq_len=w.model.seq_len,
            dtype=w.dtype, m_submodels=s.m_submodels, tie_embeddings=self.sharing.tie_embeddings,
            layer_groups=self.sharing.layer_groups, lora_rank=self.sharing.lora.rank if self.sharing.lora else None)
        base.update(values)
        return Result(**base)

    def timed_out(self, backend: "Backend", error: str, setting: str, limit_s: float, **values: Any) -> Result:
        """A `failed` row for a case that ran out of its backend's time limit `setting` (`timeout_s`), after
        `limit_s` seconds. Its extras name the scenario key and the limit (TIMED_OUT_SETTING, TIMED_OUT_AFTER_S), so
        that `llmsim run` suggests a --resume command with the limit raised (trial 42: it repeated the limit that
        had been too short). A setting --resume accepts raised: runner.RESUME_FREE_SETTINGS."""
        extra = {**values.pop("extra", {}), TIMED_OUT_SETTING: f"backends.{backend.name}.{setting}",
                 TIMED_OUT_AFTER_S: limit_s}
        return self.result(backend, status="failed", error=error, extra=extra, **values)


@dataclass
class RunContext:
    """What a backend may need beyond the case: the hardware catalog (built-ins + scenario files +
    plugin entries), the run folder for side outputs (traces, figures), and the plugin manager."""

    catalog: Catalog = field(default_factory=load_catalog)
    run_dir: Path | None = None
    manager: Any = None  # llmsim.plugins.PluginManager, for hooks such as energy meters


class Backend(ABC):
    """A way to execute (measured) or predict (modeled) one case: the protocol between runner and plugin.

    Subclasses set `name`, `kind` (measured | modeled), `description` and `Settings` (a pydantic model of
    the backend's block under `backends:`). The runner calls, in this order:

    Validation (`llmsim validate` and the start of `llmsim run`; nothing has run yet):
      1. `Settings.model_validate(block)`: a bad key is a one-line error naming `backends.<name>.<key>`.
      2. `resolve_settings(settings, catalog)`: defaults that come from the hardware catalog filled in
         (a modeled cluster's devices per node).
      3. `sweep(settings)` -> [(case-name suffix, settings)]: one point per value of a list setting.
      4. `check_settings(settings, catalog)` for each point: names the catalog must know (devices, links).
      5. `world_size(settings)` for each point, then `resolve_layout` fits every strategy to it (a
         mismatch is a validation error naming the strategy, with `describe_world(settings, catalog)`
         where the backend gives one), then `check_layout(settings, layout, catalog)` for each. A serving
         scenario instead needs `serves`, `check_serving(settings)` for each point, `check_serving_block(serving)`
         once, and a world that holds serving.replicas x tp x pp.
      `llmsim validate` then says which rows a run would skip (runner.skip_notes): `availability()` once per
      backend and `known_skip(settings, workload, catalog)` for each point, and which would not fit
      (`known_does_not_fit(settings, case, catalog)`, runner.fit_notes), as notes, not errors.
    Running (`llmsim run`, after every pair validated):
      6. `availability()` before each case: a reason -> the case's row is `skipped` with it, `run` is
         not called.
      7. `Backend(context)` once per run (the first case that runs), kept for the run's other cases, so
         an instance may cache what its cases share (a profile, a one-device time).
      8. `run(case, settings)` once per case -> a Result, status ok / skipped / does-not-fit; anything it
         raises becomes a `failed` row and the run goes on (KeyboardInterrupt stops the run, rows kept).
      9. `close()` once when the run's cases are done, by whatever way the run ends (its last case, Ctrl-C):
         an instance that kept something running between cases (a serving engine) stops it there.
    """

    name: ClassVar[str]
    kind: ClassVar[Literal["measured", "modeled"]]
    description: ClassVar[str] = ""
    Settings: ClassVar[type[BaseModel]] = NoSettings
    # Whether `run` answers a case with a serving run (Case.serving); a scenario with a serving: block may
    # only name backends that do (a validation error otherwise).
    serves: ClassVar[bool] = False

    def __init__(self, context: RunContext | None = None) -> None:
        self.context = context or RunContext()

    @classmethod
    def availability(cls) -> str | None:
        """None when this backend can run here, else the reason it cannot (shown by `llmsim backends`)."""
        return None

    @classmethod
    def resolve_settings(cls, settings: BaseModel, catalog: Catalog) -> BaseModel:
        """The settings with defaults that come from the hardware catalog filled in (default: unchanged).

        May raise ScenarioError keyed inside this backend's settings (e.g. `hardware`); the runner
        prefixes `backends.<name>.`.
        """
        return settings

    @classmethod
    def sweep(cls, settings: BaseModel) -> list[tuple[str, BaseModel]]:
        """Split settings that hold lists (e.g. nodes: [1, 2, 4]) into one settings object per point.

        Returns (case suffix, settings) pairs; the suffix is appended to the case name ("" = no sweep).
        """
        return [("", settings)]

    @classmethod
    def world_size(cls, settings: BaseModel) -> int | None:
        """Devices the backend fixes (a modeled cluster) or None when it runs what the strategy asks."""
        return None

    @classmethod
    def check_settings(cls, settings: BaseModel, catalog: Catalog) -> tuple[str, str] | None:
        """Checks that need the hardware catalog (device and link names), before anything runs.

        Returns None, or (key inside this backend's settings, message naming what is allowed).
        """
        return None

    @classmethod
    def device(cls, settings: BaseModel, catalog: Catalog) -> DeviceSpec | None:
        """The catalog device these settings price or run on, where they name one (a modeled cluster's
        `hardware`); None = the backend runs on whatever this machine has. The runner checks a float8
        workload against it (`runner.check_fp8`)."""
        return None

    @classmethod
    def check_workload(cls, workload: Workload) -> tuple[str, str] | None:
        """Checks of the workload this backend cannot run at all (a model it has no form for), before anything
        runs. Returns None, or (key inside `workload`, message naming what is allowed)."""
        return None

    @classmethod
    def check_layout(cls, settings: BaseModel, layout: Layout, catalog: Catalog) -> tuple[str, str] | None:
        """Checks of one strategy's layout on these settings that need both (a TPU slice: its mesh axes must
        tile the torus and follow the user's `mesh` pins), before anything runs.

        Returns None, or (key inside this backend's settings, or "" for the strategy itself, message)."""
        return None

    @classmethod
    def known_skip(cls, settings: BaseModel, workload: Workload, catalog: Catalog) -> tuple[str, str] | None:
        """Why every case these settings run would be a `skipped` row, where the catalog says so before anything
        runs (a modeled device without a peak for the workload's dtype), in the words the row will have; or None.
        Not an error: the other backends' rows still run. `llmsim validate` says it as a note (the runner checks
        availability() itself).

        Returns None, or (key inside this backend's settings, message)."""
        return None

    @classmethod
    def known_does_not_fit(cls, settings: BaseModel, case: Case, catalog: Catalog) -> str | None:
        """Why this case's row would be `does-not-fit`, where that is known before anything runs (a modeled
        serving replica whose KV cache holds less than one request of the context), in the row's words; or None
        (the default: a backend that only finds out by running). Not an error: a sweep's point may not fit.
        `llmsim validate` says it as a note (runner.fit_notes)."""
        return None

    @classmethod
    def describe_world(cls, settings: BaseModel, catalog: Catalog) -> str | None:
        """What the world size is made of where a layout error should say so (a TPU: its slices' topology),
        or None."""
        return None

    @classmethod
    def check_serving(cls, settings: BaseModel) -> tuple[str, str] | None:
        """Checks of settings that only a serving scenario needs (`serves` backends), before anything runs.

        Returns None, or (key inside this backend's settings, message naming what is allowed).
        """
        return None

    @classmethod
    def check_serving_block(cls, serving: ServingSpec) -> tuple[str, str] | None:
        """Checks of the scenario's serving block that this backend's engine refuses whatever the host (the `vllm`
        backend: a KV block size its attention kernel does not take), before anything runs. Returns None, or (key
        inside `serving`, message naming what is allowed): the scenario is refused, `serving.<key>`, exit 2."""
        return None

    def close(self) -> None:
        """Release what the instance kept across cases (step 9); default nothing. Must be safe to call twice."""

    @abstractmethod
    def run(self, case: Case, settings: Any) -> Result:
        """Execute or model `case`; return its row."""
