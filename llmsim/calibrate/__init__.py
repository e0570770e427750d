"""Fit a device's efficiency factors to measured runs, and write them as a hardware catalog entry.

Input: run folders of measured backends (`results.jsonl` rows with kind measured, plus `scenario.yaml`,
the resolved scenario). For each ok row the cost model predicts the same case on one device of the
measured hardware, and matmul efficiency, attention efficiency, memory bandwidth and per-operator
overhead are fitted to the measured step times. The fitted entry (`<device>-calibrated`) is a normal
catalog entry: use it with `hardware_catalog: [that file]` and
`roofline: {hardware: cpu-host-calibrated, ...}`. `llmsim calibrate RUN_DIR...` (llmsim.cli) runs it.

One job per module:
  observations  read the measured rows and the case behind each (`read_observations`, `Observation`)
  optimiser     `fit`: a bounded derivative-free minimiser (golden-section + Nelder-Mead multistart);
                pure, no llmsim imports (not named fit.py: the submodule would be shadowed by `fit`)
  model         the parameters, the prediction with the cost model, `calibrate`, the catalog entry
  report        the table and the catalog file as text (the CLI prints and writes them)
  serving       from measured serving rows (the vllm backend's): the serving iteration's matmul efficiency,
                memory bandwidth and kernel latency, fitted by replaying the rows in the serving simulation
This module is the public API only.
"""

from llmsim.calibrate.optimiser import fit
from llmsim.calibrate.model import BOUNDS, Calibration, CaseFit, calibrate, plan_for
from llmsim.calibrate.observations import CalibrationError, Observation, read_observations
from llmsim.calibrate.report import catalog_file, format_table, multi_process_warning, underdetermined_warning
from llmsim.calibrate.serving import calibrate_serving, read_serving_observations

__all__ = ["BOUNDS", "Calibration", "CalibrationError", "CaseFit", "Observation", "calibrate", "catalog_file",
           "calibrate_serving", "fit", "format_table", "multi_process_warning", "plan_for", "read_observations",
           "read_serving_observations", "underdetermined_warning"]
