"""scripts/host_noise.py: the spread of a fixed piece of work, and its argument checks."""

from __future__ import annotations

import re

import pytest

from tests.scripts.scriptload import load_script


def _module():
    return load_script("host_noise.py")


def test_prints_the_spread_of_the_tries(capsys: pytest.CaptureFixture[str]) -> None:
    noise = _module()
    assert noise.main(["--tries", "5", "--iterations", "10000", "--gap-s", "0"]) == 0
    out = capsys.readouterr().out
    match = re.fullmatch(r"core 0, 5 tries: min ([\d.]+) ms, p50 ([\d.]+), p90 ([\d.]+), max ([\d.]+); "
                         r"max/min ([\d.]+)\n", out)
    assert match is not None, out
    lo, p50, p90, hi, _ = map(float, match.groups())
    assert lo <= p50 <= p90 <= hi


def test_a_core_outside_the_affinity_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _module().main(["--core", "4096"])
    assert exit_info.value.code == 2
    assert "--core 4096: allowed:" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--gap-s", "nan"], ["--gap-s", "inf"], ["--gap-s", "-1"], ["--iterations", "1"],
                                  ["--tries", "1"]])
def test_bad_arguments_are_a_usage_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _module().main(args)
    assert exit_info.value.code == 2
    assert "--tries must be >= 2" in capsys.readouterr().err
