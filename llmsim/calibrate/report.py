"""The text `llmsim calibrate` shows and writes: the modeled-vs-measured table and the catalog file.

Text only (no printing, no files): llmsim.cli prints the table and writes the file, so a caller of
`calibrate` (a script, a test) gets the same text without a terminal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from llmsim.calibrate.model import Calibration
from llmsim.wording import count


def _labels(result: Calibration) -> tuple[dict[Path, str], int]:
    """A short tag per run folder ('r1:', 'r2:', ...) when two run folders have cases of one name, so that they are
    told apart (trial 40: `tp1@rate=2 TTFT p50` twice, from runs at two prompt lengths); none where every name is
    one folder's. With the width of the case column."""
    cases = [*result.cases, *result.checks]
    runs = list(dict.fromkeys(c.run_dir for c in cases))
    folders_of: dict[str, set[Path]] = {}
    for c in cases:
        folders_of.setdefault(c.case, set()).add(c.run_dir)
    if all(len(folders) < 2 for folders in folders_of.values()):
        return {}, 28
    return {run: f"r{k}:" for k, run in enumerate(runs, 1)}, 34


def format_table(result: Calibration) -> str:
    """Modeled vs measured per case, before and after the fit; with cases of several run folders, each tagged with
    its folder's r1, r2 ... and the folders named below the table."""
    tags, width = _labels(result)

    def name(c: Any) -> str:
        return (tags.get(c.run_dir, "") + c.case)[:width - 1]

    lines = [f"{'case':<{width}}{'mode':<9}{'measured s':>12}{'default s':>12}{'err':>8}{'fitted s':>12}{'err':>8}"]
    for b, a in zip(result.before, result.cases):
        lines.append(f"{name(a):<{width}}{a.mode:<9}{a.measured_s:>12.4g}{b.modeled_s:>12.4g}{b.error:>+8.1%}"
                     f"{a.modeled_s:>12.4g}{a.error:>+8.1%}")
    eff = result.entry["efficiency"]
    if result.kind == "serving":
        lines.append(f"fitted to the serving rows: matmul {eff['matmul']:.3f}, attention {eff['attention']:.4g}, "
                     f"memory bandwidth {result.entry['memory_bw_bytes_per_s'] / 1e9:.2f} GB/s, "
                     f"{eff['kernel_latency_s'] * 1e6:.2f} us per kernel, "
                     f"{result.entry.get('request_overhead_s', 0.0) * 1e3:.2f} ms per request outside the engine; "
                     f"median |error| {result.median_abs_error:.1%}")
    else:
        bounded = " (within the probes)" if "probes" in eff["source"] else ""
        lines.append(f"fitted{bounded}: matmul {eff['matmul']:.3f}, attention {eff['attention']:.3f}, memory "
                     f"bandwidth {result.entry['memory_bw_bytes_per_s'] / 1e9:.2f} GB/s, "
                     f"{eff['op_overhead_s'] * 1e6:.1f} us per operator; median |error| {result.median_abs_error:.1%}")
    worst = max(result.cases, key=lambda c: abs(c.error))
    dof = len(result.cases) - result.parameters
    lines.append(f"residuals after the fit: RMS of log(modeled/measured) {result.rms_log_residual:.3f}, worst "
                 f"{worst.error:+.1%} ({tags.get(worst.run_dir, '')}{worst.case}); {count(len(result.cases), 'median' if result.kind == 'serving' else 'case')} for "
                 f"{result.parameters} parameters" + (f", {count(dof, 'degree')} of freedom" if dof > 0 else ""))
    if result.checks:
        lines.append("not fitted, as a check (modeled vs measured after the fit):")
        for c in result.checks:
            lines.append(f"{name(c):<{width}}{c.mode:<9}{c.measured_s:>12.4g}{'':>20}{c.modeled_s:>12.4g}"
                         f"{c.error:>+8.1%}")
    if tags:
        lines.append("runs: " + ", ".join(f"{tag[:-1]} = {run}" for run, tag in tags.items()))
    return "\n".join(lines)


def underdetermined_warning(result: Calibration) -> str | None:
    """The warning `llmsim calibrate` prints when the fit has no more cases than parameters, else None."""
    if not result.underdetermined:
        return None
    return (f"{count(len(result.cases), 'case')} for {result.parameters} fitted parameters: the fit is not "
            f"determined by the data (many parameter sets reproduce these cases, so a small error here says "
            f"nothing about other shapes); measure at least {result.parameters + 1} cases of different shapes "
            f"(batch, seq_len, layers, mode) and calibrate on all of them")


def multi_process_warning(result: Calibration) -> str | None:
    """The warning `llmsim calibrate` prints when some fitted rows ran several processes (trial 49: a folder of
    single, dp2, tp2 and pp2 rows was fitted without a word): each is priced as its whole step on one device, so the
    gloo communication it measured ends up in the fitted efficiencies; None when every row ran one process."""
    multi = result.multi_process
    if not multi:
        return None
    shown = ", ".join(multi[:5]) + (" ..." if len(multi) > 5 else "")
    return (f"{count(len(multi), 'fitted row')} ran several processes ({shown}): each is priced as its whole step on "
            f"one device, so the communication it measured is absorbed into the fitted efficiencies; to keep it "
            f"out, calibrate from single-process rows (a run folder of strategies without dp, tp, pp or cp)")


def catalog_file(result: Calibration, file_name: str) -> str:
    """A hardware catalog YAML file holding the fitted entry, with a header that says how to use it."""
    header = ("# Written by `llmsim calibrate`. Use it from a scenario with\n"
              f"#   hardware_catalog: [{file_name}]\n"
              f"#   backends: {{roofline: {{hardware: {result.entry['name']}, nodes: 1, devices_per_node: 1}}}}\n")
    return header + yaml.safe_dump({"entries": [result.entry]}, sort_keys=False)
