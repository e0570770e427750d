"""The `cpu` backend: runs the workload for real on this machine's CPU and measures it.

Clock: time.perf_counter around each step (CPU work is synchronous; llmsim.measure.device.CpuDevice).
After `warmup` untimed steps, `steps` timed steps give p50/p99 latency; tokens/s and step_time_s use
the mean. Achieved FLOP/s come from the workload profile (the same module traced on the meta device);
MFU is against this host's peak, measured once per machine, dtype and thread count by a matmul probe
and cached with three more probes (streaming bandwidth over activation- and vocabulary-sized operands,
per-operator cost; `llmsim.measure.host_probes`) that the row reports for `llmsim calibrate`.
Energy: a RAPL (or plugin) meter where readable, else modeled from the `cpu-host` catalog entry.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
from collections.abc import Iterator

from pydantic import Field

from llmsim import Backend, Case, Result, hookimpl
from llmsim.config import mla_tp_problem
from llmsim.energy import EnergyMeter, RaplMeter, find_meter
from llmsim.measure.fit import allocation_failure, fit_problem, host_available_bytes, host_need
from llmsim.measure.host_load import load_per_core
from llmsim.measure.loop import time_steps
from llmsim.measure.row import measured_result
from llmsim.measure.summary import Energy, MeasuredSplit, rank_breakdown, summarize_ranks
from llmsim.workload.profile import profile_workload
from llmsim.strict import StrictModel

__all__ = ["CpuBackend", "CpuSettings"]

# torch, and the modules that measure with it (llmsim.measure.device, host_probes, memory; llmsim.workload.step),
# are imported where a case runs, not with this module: every command loads the installed plugins (their
# hooks: the hardware catalog's entries among them), and `llmsim plan` needs no torch once its workload's
# profile is kept (llmsim.workload.profile_store); torch's import is ~1.5 s of a 10 s plan here.


# Above any host's hardware threads (a 2-socket AMD EPYC 9965: 2 x 192 cores x 2 SMT = 768, AMD's product page):
# a larger count is a typo, and OpenMP would try to start that many threads (100000 ran out of memory, trial 33).
MAX_THREADS = 1024


class CpuSettings(StrictModel):
    """Unknown keys, a YAML boolean or a quoted number for a number are errors (StrictModel), as in a scenario."""


    steps: int = Field(5, ge=1, description="timed steps")
    warmup: int = Field(2, ge=0, description="untimed steps first (allocator, caches, lazy init)")
    threads: int | None = Field(None, ge=1, le=MAX_THREADS,
                                description="torch intra-op threads; default: torch's own "
                                            "(several processes: cores / processes each)")
    timeout_s: float = Field(600.0, gt=0, description="several processes: wall-clock limit of one case")
    profile_comm: bool = Field(True, description="several processes: one extra profiled step to measure "
                                                 "exposed communication")


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to `threads` for a block, then restored."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class CpuBackend(Backend):
    name = "cpu"
    kind = "measured"
    description = ("runs the Transformer on this machine's CPU: one process, or one per device of the strategy "
                   "through torch.distributed (gloo)")
    Settings = CpuSettings

    def _meter(self) -> EnergyMeter | None:
        meter = find_meter(self.context.manager, "cpu", [RaplMeter])
        return meter() if meter is not None else None

    def _modeled_power_w(self, threads: int) -> float:
        """Busy cores at the catalog's full-load power, the others at idle."""
        host = self.context.catalog.device("cpu-host")
        cores = os.cpu_count() or threads
        busy = min(threads, cores)
        if host.power_per_core:
            return busy * host.max_power_w + (cores - busy) * host.idle_power_w
        return host.idle_power_w + (host.max_power_w - host.idle_power_w) * busy / cores

    def _does_not_fit(self, case: Case) -> Result | None:
        """A does-not-fit row when the host's free memory cannot hold even the parameters, gradients and AdamW
        moments of the run (all its processes, and the one-process reference step of several; llmsim.measure.fit),
        before anything is allocated; None to go ahead."""
        profile = profile_workload(case.workload, case.sharing)
        train = case.workload.mode == "train"
        need = host_need(profile, 1, 0, train)
        if case.layout.world > 1:
            ranks = host_need(profile, case.layout.dp * case.layout.cp, case.strategy.zero, train)
            need = max(need, ranks, key=lambda n: n.total)
        what = "on this host" if case.layout.world == 1 else f"on this host for {case.layout.world} processes"
        problem = fit_problem(need, host_available_bytes(), what)
        if problem is None:
            return None
        return case.result(self, status="does-not-fit", error=problem, hardware="cpu-host", nodes=1,
                           params=profile.params, peak_memory_bytes_per_device=need.total / case.layout.world,
                           extra={"memory_needed_at_least_bytes": need.total})

    def run(self, case: Case, settings: CpuSettings) -> Result:
        refused = self._does_not_fit(case)
        if refused is not None:
            return refused
        unsharded = mla_tp_problem(case.workload.model, case.layout.tp)
        if unsharded:
            return case.result(self, status="skipped", error=unsharded)
        if case.layout.world > 1:
            return self._run_distributed(case, settings)
        try:
            return self._run_one_process(case, settings)
        except (RuntimeError, MemoryError) as exc:   # the allocator's failure is a does-not-fit, not a traceback row
            problem = allocation_failure(exc, host_available_bytes())
            if problem is None:
                raise
            return case.result(self, status="does-not-fit", error=problem, hardware="cpu-host", nodes=1)

    def _run_one_process(self, case: Case, settings: CpuSettings) -> Result:
        import torch

        from llmsim.measure.device import CpuDevice
        from llmsim.measure.host_probes import host_rates
        from llmsim.measure.sdpa import attention_kernel_watch, watching_first_call
        from llmsim.workload.step import WorkloadStep

        if settings.threads:
            torch.set_num_threads(settings.threads)
        threads = torch.get_num_threads()
        device = CpuDevice()
        memory = device.memory()
        step = WorkloadStep(case.workload, case.sharing, seed=case.seed, micro_batch=case.layout.micro_batch)
        memory.forget_peak()  # the built model counts, the float32 copy it was cast from does not
        meter = self._meter()
        watch = attention_kernel_watch(settings.warmup, compiled=False)   # which SDPA kernel the step runs
        run = watching_first_call(step.step, watch) if watch is not None else step.step
        timings = time_steps(run, device, steps=settings.steps, warmup=settings.warmup, meter=meter)
        peak_memory = memory.peak_bytes()
        loads = [m.tokens_per_expert.tolist() for m in step.model.moe_modules()]  # MoE: what the router did
        del step

        summary = timings.summary(case.workload.decode_tokens)
        rates = host_rates(case.workload.dtype)
        energy = timings.metered_energy(meter) or Energy.modeled(self._modeled_power_w(threads), summary.step_time_s)
        return measured_result(self, case, summary, hardware="cpu-host", peak_memory_bytes=peak_memory,
                               peak_flops_per_s=rates.peak_flops_per_s, breakdown=MeasuredSplit.one_device(summary),
                               energy=energy, extra={**rates.columns(), "threads": threads,
                                                     "memory_method": memory.method,
                                                     "host_load_per_core": load_per_core()},
                               expert_tokens=loads, attention_kernel=watch.kernel if watch is not None else None)

    # -- several processes (torch.distributed, gloo) ---------------------------------------------
    def _run_distributed(self, case: Case, settings: CpuSettings) -> Result:
        """One process per device of the strategy on this host (llmsim.distributed); docs/distributed.md.

        step_time_s: per timed step the slowest rank's time (each rank starts after a barrier), averaged.
        C (c_per_submodel_s): the single-process step of the same global batch, measured here in the
        parent with one rank's thread count, divided by m = tp*pp. Exposed communication and the
        pipeline's send/recv waits (bubble) come from one profiled step per rank, as fractions of
        that step applied to step_time_s (llmsim.measure.summary).
        """
        from llmsim.distributed.launch import launch
        from llmsim.distributed.spec import WorkerSpec, unsupported_reason
        from llmsim.measure.host_probes import host_rates

        world = case.layout.world
        threads = settings.threads or max(1, (os.cpu_count() or 1) // world)
        spec = WorkerSpec.from_layout(case.workload, case.sharing, case.strategy, case.layout,
                                      seed=case.seed, steps=settings.steps, warmup=settings.warmup, threads=threads,
                                      device_type="cpu", profile_comm=settings.profile_comm)
        base = dict(hardware="cpu-host", nodes=1)
        reason = unsupported_reason(spec)
        if reason:
            return case.result(self, status="skipped", error=reason, **base)
        log_dir = None
        if self.context.run_dir is not None:
            log_dir = self.context.run_dir / "distributed" / case.name.replace("/", "_")
        outcome = launch(spec, timeout_s=settings.timeout_s, log_dir=log_dir)
        if outcome.timed_out_s is not None:
            return case.timed_out(self, outcome.error or "", "timeout_s", outcome.timed_out_s, **base,
                                  extra={"worker_pids": json.dumps(outcome.pids)})
        if not outcome.ok:
            return case.result(self, status="failed", error=outcome.error, **base,
                               extra={"worker_pids": json.dumps(outcome.pids)})
        records = outcome.records
        single_s = self._single_process_step_s(case, settings, threads)
        summary = summarize_ranks(records, case.workload.decode_tokens)
        breakdown = rank_breakdown(records, summary, c_per_submodel_s=single_s / case.strategy.m_submodels,
                                   pipeline=case.layout.pp > 1)
        with torch_threads(threads):  # this host's rates with one rank's threads: the per-device peak of MFU
            rates = host_rates(case.workload.dtype)
        extra = {
            **rates.columns(), "threads": threads, "processes": world, "memory_method": records[0].memory_method,
            "single_process_step_s": single_s, "comm_method": "torch.profiler: gloo ops not covered by compute",
            "peak_memory_bytes_per_rank": json.dumps([r.peak_memory_bytes for r in records]),
            "comm_busy_s": statistics.fmean(r.comm_busy_s or 0.0 for r in records),
            "losses": json.dumps(records[0].losses), "torch_parallelism": json.dumps(records[0].notes),
            "launch_wall_s": round(outcome.wall_s, 3), "host_load_per_core": load_per_core()}
        if outcome.teardown:
            extra["teardown"] = outcome.teardown
        return measured_result(self, case, summary, hardware="cpu-host",
                               peak_memory_bytes=max(r.peak_memory_bytes for r in records),
                               peak_flops_per_s=rates.peak_flops_per_s, breakdown=breakdown,
                               energy=Energy.modeled(self._modeled_power_w(threads * world), summary.step_time_s),
                               extra=extra, expert_tokens=records[0].expert_tokens)

    @staticmethod
    def _single_process_step_s(case: Case, settings: CpuSettings, threads: int) -> float:
        """The whole step on one process with one rank's threads: m*C of T = m*C/n."""
        from llmsim.measure.device import CpuDevice
        from llmsim.measure.memory import release_freed_memory
        from llmsim.workload.step import WorkloadStep

        try:
            with torch_threads(threads):
                step = WorkloadStep(case.workload, case.sharing, seed=case.seed, micro_batch=case.layout.micro_batch)
                timings = time_steps(step.step, CpuDevice(), steps=settings.steps, warmup=settings.warmup)
                del step
                return statistics.fmean(timings.step_times_s)
        finally:
            release_freed_memory()


@hookimpl
def llmsim_backends() -> list[type[Backend]]:
    return [CpuBackend]
