"""The serving metrics of a run, defined as vLLM's `bench serve` defines them (vllm/benchmarks/serve.py,
`calculate_metrics`), and the per-request table.

Per request, with t = 0 at the first arrival:
* TTFT = first token - arrival; E2E = last token - arrival; queue = first scheduled - arrival (vLLM's
  "queued time");
* TPOT = (E2E - TTFT) / (output tokens - 1), for requests of more than one output token;
* ITL = the gaps between consecutive streamed chunks of a request (all gaps of all requests pooled): vLLM's
  `bench serve` appends one ITL per chunk it receives (vllm/benchmarks/lib/endpoint_request_func.py,
  `output.itl.append(timestamp - most_recent_timestamp)` per SSE chunk), and the tokens one iteration emits for
  a request go out in one chunk, so with speculative decoding a burst of a + 1 tokens is one gap, not a + 1 (TPOT
  still divides by every token: (E2E - TTFT) / (output - 1)). Without speculation every chunk is one token;
* accept_length (speculative decoding, serving.speculative) = tokens emitted / verify steps over the run.
Per run, over the finished requests: means and percentiles (numpy's linear interpolation, as vLLM),
requests_per_s and output_tokens_per_s = counts / duration, the duration running from the first arrival
to the last token (vLLM bench's benchmark_duration: the arrivals' span plus the drain of the requests still
running after the last arrival, so requests_per_s is below the offered rate even when all are served);
goodput_rps over the same window. A closed loop (arrival kind concurrency) has no offered rate: its request_rate is
the rate achieved, requests sent / duration, and its `concurrency` column the clients (empty for an open loop);
each request's arrival is when its client sent it, so TTFT and E2E are timed from the send, as vLLM's `bench serve
--max-concurrency` times them (after its semaphore). The extras say exactly what happened: requests_sent = done + rejected +
unfinished (unfinished: accepted, never completed; 0 in the simulation, which drains every request),
arrival_span_s (first to last arrival) and duration_s.
SLO (DistServe, Zhong et al. 2024, OSDI '24, Sec. 2): a request is good when its TTFT and its TPOT are
within the bounds given; goodput_rps = good requests / duration (vLLM bench's `--goodput`, after DistServe);
slo_attainment = good requests / all requests sent (a rejected request is not good); the run meets the SLO
(`slo_met`) when slo_attainment >= percentile / 100, DistServe's attainment goal, and, where the SLO gives
them, its run-level bounds hold (Sarathi-Serve's capacity SLO, llmsim.serving.spec.Slo): the itl_percentile-th
percentile of the pooled ITL <= itl_s and the queue_percentile-th percentile of the queueing delays <= queue_s
(the values are the extras slo_itl_value_s and slo_queue_value_s).
"""

from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np

from llmsim.serving.simulate import ServingOutcome
from llmsim.serving.spec import Slo

TIMELINE_COLUMNS = ("replica", "iteration", "time_s", "batch", "tokens", "kv_blocks_used", "kv_utilization", "waiting")
# Rows per replica the timeline CSV keeps: a report figure is ~1,000 pixels wide, so 4,000 points per replica
# draw the same picture as the ~11,000 iterations per replica of benchmarks/bench_serving.py's run; a row is
# ~46 bytes (measured on scenarios/serve-8b.yaml), so at most ~185 kB per replica.
MAX_TIMELINE_ROWS = 4000

REQUEST_COLUMNS = ("request_id", "replica", "status", "reason", "arrival_s", "input_tokens", "output_tokens",
                   "queue_s", "ttft_s", "tpot_s", "e2e_s", "itl_max_s", "preemptions", "finish_s")


def _stat(values: np.ndarray, q: float | None = None) -> float | None:
    if values.size == 0:
        return None
    return float(np.mean(values) if q is None else np.percentile(values, q))


def chunk_gaps(token_times: Any) -> np.ndarray:
    """The gaps between a request's streamed chunks, seconds: tokens out at the same instant (one iteration's
    speculative burst) are one chunk (module docstring)."""
    times = np.frombuffer(token_times, dtype=np.float64)
    if times.size < 2:
        return np.array([])
    return np.diff(times[np.concatenate(([True], np.diff(times) > 0))])


def seq_limit_iterations(outcome: ServingOutcome, limits: list[int]) -> int:
    """Iterations that ran with the batch at its replica's max_num_seqs (`limits`, one per timeline: times the
    attention data-parallel ranks, whose timeline sums theirs) while requests were left waiting: the iterations the
    limit held requests back in. 0 where it never did, even if the batch touched it (trial 45: a run at
    max_num_seqs 100 whose batch peaked at 100 with nobody waiting, every figure the same as at 256, was said to be
    held back)."""
    total = 0
    for timeline, limit in zip(outcome.timelines, limits):
        if not len(timeline):
            continue
        batch = np.frombuffer(timeline.batch, dtype=f"i{timeline.batch.itemsize}")
        waiting = np.frombuffer(timeline.waiting, dtype=f"i{timeline.waiting.itemsize}")
        total += int(np.count_nonzero((batch >= limit) & (waiting > 0)))
    return total


def summarize(outcome: ServingOutcome, rate: float | None, slo: Slo | None,
              seq_limits: list[int] | None = None) -> dict[str, Any]:
    """The serving result columns (llmsim.results.SERVING_COLUMNS) and the run's extras. ValueError for a run
    stopped early (outcome.stopped): its percentiles, rates and goodput would be those of the requests finished
    by the stop, not the run's; llmsim.serving.early_stop.EarlyStop says what is known of it. `seq_limits`: each
    replica's max_num_seqs (a simulated run), for the extra `iterations_at_max_num_seqs` (seq_limit_iterations)."""
    if outcome.stopped is not None:
        raise ValueError("a run stopped early has no result row: only bounds on its SLO attainment are known "
                         "(outcome.stopped)")
    seqs = outcome.sequences
    arrival = np.array([s.request.arrival_s for s in seqs])
    first = np.array([s.token_times[0] for s in seqs])
    last = np.array([s.token_times[-1] for s in seqs])
    # when each was first scheduled: NaN where nobody knows (a measured engine does not say), left out of queue_*
    scheduled = np.array([np.nan if s.scheduled_s is None else s.scheduled_s for s in seqs], dtype=np.float64)
    outputs = np.array([s.request.output_tokens for s in seqs])
    ttft, e2e, queue = first - arrival, last - arrival, scheduled - arrival
    queue = queue[~np.isnan(queue)]
    multi = outputs > 1
    tpot = (last[multi] - first[multi]) / (outputs[multi] - 1)
    itl = np.concatenate([chunk_gaps(s.token_times) for s in seqs]) if seqs else np.array([])
    duration = outcome.duration_s
    sent = len(seqs) + len(outcome.rejected)
    if outcome.clients is not None:  # a closed loop: the rate its clients achieved, requests sent / duration
        rate = sent / duration if duration > 0 else None
    elif rate is None and sent > 1:  # a trace as recorded: its mean arrival rate
        arrivals = sorted([s.request.arrival_s for s in seqs] + [r.request.arrival_s for r in outcome.rejected])
        rate = (sent - 1) / arrivals[-1] if arrivals[-1] > 0 else None
    row: dict[str, Any] = dict(
        request_rate=rate, concurrency=outcome.clients,
        requests_per_s=len(seqs) / duration if duration > 0 else None,
        output_tokens_per_s=float(outputs.sum()) / duration if duration > 0 else None,
        ttft_mean_s=_stat(ttft), tpot_mean_s=_stat(tpot), itl_mean_s=_stat(itl), e2e_mean_s=_stat(e2e),
        ttft_p50_s=_stat(ttft, 50), ttft_p90_s=_stat(ttft, 90), ttft_p99_s=_stat(ttft, 99),
        tpot_p50_s=_stat(tpot, 50), tpot_p90_s=_stat(tpot, 90), tpot_p99_s=_stat(tpot, 99),
        itl_p50_s=_stat(itl, 50), itl_p99_s=_stat(itl, 99), e2e_p50_s=_stat(e2e, 50), e2e_p99_s=_stat(e2e, 99),
        queue_p50_s=_stat(queue, 50), goodput_rps=None, slo_attainment=None,
        kv_peak_utilization=outcome.kv_peak_utilization, preemptions=outcome.preemptions,
        accept_length=outcome.extra.get("accept_length"))
    arrivals_all = [s.request.arrival_s for s in seqs] + [r.request.arrival_s for r in outcome.rejected]
    extra: dict[str, Any] = dict(
        requests_sent=sent, requests_done=len(seqs), requests_rejected=len(outcome.rejected),
        requests_unfinished=sent - len(seqs) - len(outcome.rejected),
        arrival_span_s=max(arrivals_all) - min(arrivals_all) if arrivals_all else 0.0,
        rejected_context=sum(r.reason == "context" for r in outcome.rejected),
        rejected_kv_cache=sum(r.reason == "kv-cache" for r in outcome.rejected),
        duration_s=duration, input_tokens_per_s=(sum(s.request.input_tokens for s in seqs) / duration
                                                 if duration > 0 else None),
        mean_in_system=outcome.occupancy_s / duration if duration > 0 else None,
        iterations=sum(outcome.iterations), max_batch=max(outcome.max_batch, default=0),
        **({"iterations_at_max_num_seqs": seq_limit_iterations(outcome, seq_limits)}
           if seq_limits is not None and outcome.timelines else {}),
        kv_blocks_per_replica=outcome.kv_blocks, sim_events=outcome.events, sim_wall_s=outcome.wall_s)
    if outcome.clients is not None:
        extra.update(think_s=outcome.think_s)
    if slo is not None:
        tpot_all = np.zeros(len(seqs))
        tpot_all[multi] = tpot
        ok = np.ones(len(seqs), dtype=bool)
        if slo.ttft_s is not None:
            ok &= ttft <= slo.ttft_s
        if slo.tpot_s is not None:
            ok &= tpot_all <= slo.tpot_s
        good = int(np.count_nonzero(ok))
        met = bool(sent and good / sent >= slo.percentile / 100)
        # the run-level bounds (Slo's docstring): a run with no gap or no queueing delay to measure does not meet one
        itl_q = _stat(itl, slo.itl_percentile) if slo.itl_s is not None else None
        queue_q = _stat(queue, slo.queue_percentile) if slo.queue_s is not None else None
        if slo.itl_s is not None:
            met = met and itl_q is not None and itl_q <= slo.itl_s
        if slo.queue_s is not None:
            met = met and queue_q is not None and queue_q <= slo.queue_s
        row.update(goodput_rps=good / duration if duration > 0 else 0.0,
                   slo_attainment=good / sent if sent else None)
        extra.update(slo_good_requests=good, slo_met=met, slo_ttft_s=slo.ttft_s, slo_tpot_s=slo.tpot_s,
                     slo_percentile=slo.percentile)
        if slo.itl_s is not None:
            extra.update(slo_itl_s=slo.itl_s, slo_itl_percentile=slo.itl_percentile, slo_itl_value_s=itl_q)
        if slo.queue_s is not None:
            extra.update(slo_queue_s=slo.queue_s, slo_queue_percentile=slo.queue_percentile,
                         slo_queue_value_s=queue_q)
    row["extra"] = extra
    return row


def requests_table(outcome: ServingOutcome) -> str:
    """One CSV line per request sent (served or rejected), REQUEST_COLUMNS, ordered by request id."""
    lines: list[tuple[int, list[Any]]] = []
    for s in outcome.sequences:
        r, times = s.request, s.token_times
        ttft = times[0] - r.arrival_s
        tpot = (times[-1] - times[0]) / (r.output_tokens - 1) if r.output_tokens > 1 else None
        itl = max((b - a for a, b in zip(times, times[1:])), default=None)   # a burst's zero gaps never the max
        queue = None if s.scheduled_s is None else s.scheduled_s - r.arrival_s   # unknown for a measured engine
        lines.append((r.id, [r.id, s.replica, "ok", "", r.arrival_s, r.input_tokens, r.output_tokens, queue, ttft,
                             tpot, times[-1] - r.arrival_s, itl, s.preemptions, times[-1]]))
    for rej in outcome.rejected:
        r = rej.request
        lines.append((r.id, [r.id, "", "rejected", rej.reason, r.arrival_s, r.input_tokens, r.output_tokens,
                             "", "", "", "", "", 0, ""]))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(REQUEST_COLUMNS)
    for _, values in sorted(lines, key=lambda item: item[0]):
        writer.writerow(["" if v is None else v for v in values])
    return buffer.getvalue()


def timeline_table(outcome: ServingOutcome, max_rows: int = MAX_TIMELINE_ROWS) -> str:
    """One CSV line per iteration of every replica (TIMELINE_COLUMNS), at most `max_rows` per replica: when a
    replica ran more iterations, every k-th one from its first, k = ceil(iterations / max_rows) (a sample: a
    short spike between two kept iterations is not in the file; the row's max_batch and kv_peak_utilization
    are exact). `iteration` is the iteration's index on its replica; kv_utilization = kv_blocks_used / blocks."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1 (got {max_rows})")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(TIMELINE_COLUMNS)
    for replica, t in enumerate(outcome.timelines):
        blocks = outcome.kv_blocks_each[replica] if outcome.kv_blocks_each else outcome.kv_blocks
        stride = -(-len(t) // max_rows) or 1
        for i in range(0, len(t), stride):
            used = t.kv_blocks_used[i]
            writer.writerow([replica, i, repr(t.time_s[i]), t.batch[i], t.tokens[i], used,
                             f"{used / blocks:.6g}" if blocks else "", t.waiting[i]])
    return buffer.getvalue()
