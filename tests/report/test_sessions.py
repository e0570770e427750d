"""A folder's runs as sessions (results.record_session, sessions.jsonl; each row's `session`) and the report's
sentence when its rows came from more than one (report.run.sessions_sentence)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from llmsim.report.run import sessions_sentence
from llmsim.results import SESSIONS_FILE, read_sessions, record_session

ENV = {"python": "3.11.7", "cpu_model": "EPYC 7B13", "cpu_count": 2, "torch_threads": 2,
       "packages": {"llmsim": "0.1.0", "torch": "2.13.0+cpu"}, "git_commit": "aaaaaaaaaaaa1111"}


def test_each_run_of_a_folder_is_the_next_session_and_a_damaged_line_is_skipped(tmp_path: Path) -> None:
    assert read_sessions(tmp_path) == {}
    assert record_session(tmp_path, ENV) == 1
    with (tmp_path / SESSIONS_FILE).open("a") as f:
        f.write('{"session": "x"}\nnot json\n{"session": 5')      # edited, damaged, cut by a kill
    assert record_session(tmp_path, {**ENV, "cpu_count": 8}) == 2
    sessions = read_sessions(tmp_path)
    assert sorted(sessions) == [1, 2] and sessions[2]["environment"]["cpu_count"] == 8
    assert sessions[1]["started"].endswith("+00:00")


def _frame(*sessions: int | None) -> pd.DataFrame:
    return pd.DataFrame({"case": [f"c{i}" for i in range(len(sessions))], "session": list(sessions)})


def test_rows_of_one_session_or_of_none_recorded_say_nothing() -> None:
    assert sessions_sentence(_frame(1, 1, 1), {1: {"environment": ENV}}) is None
    assert sessions_sentence(pd.DataFrame({"case": ["a"]}), {}) is None              # a folder of before
    assert sessions_sentence(_frame(None, None), {}) is None


def test_sessions_on_another_host_and_llmsim_are_named_with_what_differs() -> None:
    other = {**ENV, "cpu_model": "Xeon 8480", "git_commit": "bbbbbbbbbbbb2222",
             "packages": {"llmsim": "0.2.0", "torch": "2.13.0+cpu"}}
    text = sessions_sentence(_frame(1, 1, 2), {1: {"environment": ENV}, 2: {"environment": other}})
    assert text == ("The rows come from 2 runs of this folder (a --resume adds a session): session 1 (the first "
                    "run): 2 rows; session 2: 1 row. Their environments differ (llmsim 0.1.0 → 0.2.0; commit "
                    "aaaaaaaaaa → bbbbbbbbbb; host CPU EPYC 7B13 → Xeon 8480): compare rows across sessions with "
                    "care, measured rows above all (each row's session is in results.csv).")


def test_a_session_missing_from_the_record_says_the_comparison_is_unknown() -> None:
    text = sessions_sentence(_frame(1, 2), {1: {"environment": ENV}})
    assert text is not None and text.endswith("sessions.jsonl does not record every one of them: whether they ran "
                                              "alike is unknown.")


def test_rows_of_a_run_before_sessions_were_recorded_count_as_one_more_run() -> None:
    """A folder of an older llmsim resumed now: its old rows have no session, the resume's have 1."""
    text = sessions_sentence(_frame(None, None, 1), {1: {"environment": ENV}})
    assert text == ("The rows come from 2 runs of this folder (a --resume adds a session): a run that recorded no "
                    "session: 2 rows; session 1: 1 row. sessions.jsonl does not record every one of them: whether "
                    "they ran alike is unknown.")


def test_a_comparison_says_which_run_came_from_more_than_one_session(tmp_path: Path) -> None:
    """A comparison of A and a resumed B carries B's sessions sentence (trial 49: only B's own report said it)."""
    from llmsim.report.build import write_comparison
    from llmsim.results import SESSIONS_FILE
    from tests.report.helpers import make_run, row

    a = make_run(tmp_path / "a", [row("single", step=1.0), row("dp", step=0.5, n=2)])
    b = make_run(tmp_path / "b", [row("single", step=1.0, extra={"session": 1}),
                                  row("dp", step=0.5, n=2, extra={"session": 2})])
    with (b / SESSIONS_FILE).open("w") as f:
        for n, threads in ((1, 2), (2, 1)):
            f.write(f'{{"session": {n}, "started": "x", "environment": {{"torch_threads": {threads}}}}}\n')
    folder = write_comparison([a, b], tmp_path / "cmp")
    md = " ".join((folder / "report.md").read_text().split())
    assert "B: The rows come from 2 runs of this folder (a --resume adds a session)" in md
    assert "Their environments differ (torch threads 2 → 1)" in md and "A: The rows come from" not in md
