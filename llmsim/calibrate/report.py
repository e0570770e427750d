"""The text `llmsim calibrate` shows and writes: the modeled-vs-measured table and the catalog file.

Text only (no printing, no files): llmsim.cli prints the table and writes the file, so a caller of
`calibrate` (a script, a test) gets the same text without a terminal.
"""

from __future__ import annotations

import yaml

from llmsim.calibrate.model import Calibration
from llmsim.wording import count


def format_table(result: Calibration) -> str:
    """Modeled vs measured per case, before and after the fit."""
    lines = [f"{'case':<28}{'mode':<9}{'measured s':>12}{'default s':>12}{'err':>8}{'fitted s':>12}{'err':>8}"]
    for b, a in zip(result.before, result.cases):
        lines.append(f"{a.case[:27]:<28}{a.mode:<9}{a.measured_s:>12.4g}{b.modeled_s:>12.4g}{b.error:>+8.1%}"
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
                 f"{worst.error:+.1%} ({worst.case}); {count(len(result.cases), 'median' if result.kind == 'serving' else 'case')} for "
                 f"{result.parameters} parameters" + (f", {count(dof, 'degree')} of freedom" if dof > 0 else ""))
    if result.checks:
        lines.append("not fitted, as a check (modeled vs measured after the fit):")
        for c in result.checks:
            lines.append(f"{c.case[:27]:<28}{c.mode:<9}{c.measured_s:>12.4g}{'':>20}{c.modeled_s:>12.4g}{c.error:>+8.1%}")
    return "\n".join(lines)


def underdetermined_warning(result: Calibration) -> str | None:
    """The warning `llmsim calibrate` prints when the fit has no more cases than parameters, else None."""
    if not result.underdetermined:
        return None
    return (f"{count(len(result.cases), 'case')} for {result.parameters} fitted parameters: the fit is not "
            f"determined by the data (many parameter sets reproduce these cases, so a small error here says "
            f"nothing about other shapes); measure at least {result.parameters + 1} cases of different shapes "
            f"(batch, seq_len, layers, mode) and calibrate on all of them")


def catalog_file(result: Calibration, file_name: str) -> str:
    """A hardware catalog YAML file holding the fitted entry, with a header that says how to use it."""
    header = ("# Written by `llmsim calibrate`. Use it from a scenario with\n"
              f"#   hardware_catalog: [{file_name}]\n"
              f"#   backends: {{roofline: {{hardware: {result.entry['name']}, nodes: 1, devices_per_node: 1}}}}\n")
    return header + yaml.safe_dump({"entries": [result.entry]}, sort_keys=False)
