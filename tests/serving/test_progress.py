"""A long serving simulation says how far it is (llmsim.serving.simulate.ProgressLine), and `llmsim run` shows it."""

from __future__ import annotations

import logging

import pytest

import llmsim.serving.simulate as simulate
from llmsim import cli
from llmsim.serving.requests import build_requests
from llmsim.serving.schedulers import BUILTIN
from llmsim.serving.spec import ServingCase, ServingSpec
from tests.serving.helpers import run


def _requests(n: int) -> list:
    spec = ServingSpec.model_validate({"requests": n, "arrival": {"kind": "poisson", "rate": 50},
                                       "lengths": {"input": 40, "output": 8}})
    return build_requests(ServingCase(spec, seed=0, scheduler=BUILTIN["continuous"]))


def test_a_simulation_logs_requests_finished_of_the_list_and_simulated_seconds(monkeypatch, caplog) -> None:
    monkeypatch.setattr(simulate, "PROGRESS_INTERVAL_S", 0.0)
    monkeypatch.setattr(simulate, "PROGRESS_CHECK_EVERY", 100)
    with caplog.at_level(logging.INFO, logger=simulate.PROGRESS_LOG.name):
        outcome = run(_requests(300))
    lines = [r.getMessage() for r in caplog.records if r.name == simulate.PROGRESS_LOG.name]
    assert len(outcome.sequences) == 300
    assert [line.split(" requests")[0].split()[-1] for line in lines] == ["100", "200", "300"]
    assert all("of 300" in line and "s simulated" in line for line in lines), lines


def test_a_short_simulation_says_nothing(caplog) -> None:
    """The clock is read every PROGRESS_CHECK_EVERY requests and a line needs PROGRESS_INTERVAL_S of wall time."""
    with caplog.at_level(logging.INFO, logger=simulate.PROGRESS_LOG.name):
        run(_requests(50))
    assert not [r for r in caplog.records if r.name == simulate.PROGRESS_LOG.name]


def test_the_command_line_prints_the_lines_on_stderr_once(monkeypatch, capsys) -> None:
    log = logging.getLogger(cli.SIMULATION_PROGRESS_LOGGER)
    monkeypatch.setattr(log, "handlers", [])
    monkeypatch.setattr(log, "propagate", True)
    assert cli.SIMULATION_PROGRESS_LOGGER == simulate.PROGRESS_LOG.name
    cli.show_simulation_progress()
    cli.show_simulation_progress()
    assert len(log.handlers) == 1 and not log.propagate
    simulate.PROGRESS_LOG.info("  serving simulation: %s requests finished", "1,024")
    assert capsys.readouterr().err == "  serving simulation: 1,024 requests finished\n"


@pytest.fixture(autouse=True)
def _restore_level():  # noqa: ANN202 - the logger's level as the other tests found it
    log = logging.getLogger(simulate.PROGRESS_LOG.name)
    level, propagate, handlers = log.level, log.propagate, list(log.handlers)
    yield
    log.setLevel(level)
    log.propagate = propagate
    log.handlers[:] = handlers
