"""Report builders: a run folder's report.md + report.html + figures, and comparisons of runs.

`build.write_report(run_dir)` and `build.write_comparison(run_dirs, out)` are the entry points; see
docs/reports.md for what each figure shows.
"""
