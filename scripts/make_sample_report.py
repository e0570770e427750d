#!/usr/bin/env python3
"""Rebuild the committed sample report, reports/sample/, from scenarios/sample.yaml.

Runs the scenario with `llmsim run` exactly as a user would (on every backend of the scenario that is
installed here: cpu measures, roofline models), copies the run folder to reports/sample/, rebuilds its
report there (so it names its final place), and checks that the folder stays small enough to commit.

    python scripts/make_sample_report.py [--scenario scenarios/sample.yaml] [--dest reports/sample]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_BYTES = 1_000_000  # the committed sample stays under 1 MB
KEEP = ("results.csv", "results.jsonl", "scenario.yaml", "environment.json", "trace.json", "planned.json")


def installed_backends(wanted: list[str]) -> list[str]:
    """The scenario's backends that this installation has (a missing plugin would stop the run)."""
    from llmsim.plugins import get_plugin_manager
    from llmsim.registry import BackendRegistry

    names = BackendRegistry.from_manager(get_plugin_manager()).names
    return [b for b in wanted if b in names]


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", type=Path, default=REPO / "scenarios" / "sample.yaml")
    parser.add_argument("--dest", type=Path, default=REPO / "reports" / "sample")
    args = parser.parse_args(argv)

    import yaml

    from llmsim.report.build import write_report

    wanted = list((yaml.safe_load(args.scenario.read_text()) or {}).get("backends") or {})
    backends = installed_backends(wanted)
    if not backends:
        print(f"none of the scenario's backends ({', '.join(wanted)}) is installed", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "llmsim", "run", str(args.scenario), "--out", tmp]
        for name in backends:
            cmd += ["--backend", name]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
        if proc.returncode != 0:
            print(f"llmsim run failed with exit code {proc.returncode}", file=sys.stderr)
            return proc.returncode
        run_dir = Path(proc.stdout.strip().splitlines()[-1])
        if args.dest.exists():
            shutil.rmtree(args.dest)
        args.dest.mkdir(parents=True)
        for name in KEEP:
            if (run_dir / name).exists():
                shutil.copy2(run_dir / name, args.dest / name)
    for path in write_report(args.dest):
        path.chmod(0o644)
    for name in KEEP:
        if (args.dest / name).exists():
            (args.dest / name).chmod(0o644)
    size = folder_size(args.dest)
    if size > MAX_BYTES:
        print(f"{args.dest} is {size / 1e6:.2f} MB, over the {MAX_BYTES / 1e6:.0f} MB limit", file=sys.stderr)
        return 1
    print(f"{size / 1e3:.0f} kB", file=sys.stderr)
    print(args.dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
