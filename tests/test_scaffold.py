"""`llmsim new-plugin` and the committed example plugin, installed and used like a third-party package."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llmsim.cli import main
from llmsim.scaffold import plugin_files
from tests.conftest import REPO

EXAMPLE = REPO / "plugins" / "example"


def test_committed_example_is_what_new_plugin_writes() -> None:
    for rel, content in plugin_files("example").items():
        assert (EXAMPLE / rel).read_text() == content, f"plugins/example/{rel} differs: rerun " \
                                                         f"`llmsim new-plugin example --dir plugins/example`"


def test_new_plugin_writes_a_package(tmp_path: Path, capsys) -> None:
    assert main(["new-plugin", "my-chip", "--dir", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "llmsim_my_chip" / "__init__.py").exists()
    assert 'my-chip = "llmsim_my_chip"' in (tmp_path / "p" / "pyproject.toml").read_text()


def test_new_plugin_rejects_bad_names_and_existing_folders(tmp_path: Path, capsys) -> None:
    assert main(["new-plugin", "Bad Name", "--dir", str(tmp_path / "x")]) == 2
    assert "not a valid plugin name" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    assert main(["new-plugin", "ok-name", "--dir", str(tmp_path / "full")]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.slow
def test_example_plugin_installs_and_is_listed_and_run(tmp_path: Path) -> None:
    """pip-install the example into a private folder; llmsim finds it through its entry point alone."""
    target = tmp_path / "site"
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *isolation,
                    "--target", str(target), str(EXAMPLE)], check=True, capture_output=True, timeout=300)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]))
    listed = subprocess.run([sys.executable, "-m", "llmsim", "backends"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert "example" in listed.stdout and "modeled" in listed.stdout
    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump({
        "name": "example-run", "workload": {"model": {"preset": "tiny"}, "batch": 4, "dtype": "bfloat16"},
        "strategies": [{"name": "dp4"}], "backends": {"example": {"devices": 4}}}))
    ran = subprocess.run([sys.executable, "-m", "llmsim", "run", str(scenario), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert ran.returncode == 0, ran.stderr
    run_dir = Path(ran.stdout.strip().splitlines()[-1])
    rows = (run_dir / "results.csv").read_text()
    assert "example-npu" in rows and ",ok," in rows
