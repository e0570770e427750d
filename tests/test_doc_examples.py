"""Every example in README.md and docs/*.md is real (issue 15 item 7: the README showed tp 3 rejected for
12 heads, but 3 divides 12 and the scenario validated).

* A fenced block whose lines start with `$ llmsim` is a transcript: each command runs (in-process, from a
  folder where `scenarios/` is the repository's, so relative paths print as in the docs and nothing is
  written into the repository) and its output must be the lines below it, up to the next `$`. Output is
  stderr then stdout (llmsim prints its result, the run folder, last on stdout). `...` alone on a line
  stands for any lines, inside a line for any text; trailing spaces are ignored. The exit code must be 2
  when the expected output is an `llmsim: error:` line, else 0.
* Every other `llmsim ...` line of a fenced block (a command without its output) must at least parse:
  a renamed flag or verb fails here. Synopsis lines with placeholders in brackets are skipped.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from llmsim.cli import build_parser, main
from tests.conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)


@dataclass(frozen=True)
class Example:
    where: str          # file:line
    command: str
    expected: list[str]


def blocks(path: Path) -> list[tuple[int, str]]:
    text = path.read_text(encoding="utf-8")
    return [(text[:m.start()].count("\n") + 2, m.group(1)) for m in FENCE.finditer(text)]


def transcripts() -> list[Example]:
    out = []
    for path in DOCS:
        for line_no, body in blocks(path):
            lines = body.splitlines()
            if not lines or not lines[0].startswith("$ llmsim "):
                continue
            for i, line in enumerate(lines):
                if line.startswith("$ "):
                    expected = []
                    for nxt in lines[i + 1:]:
                        if nxt.startswith("$ "):
                            break
                        expected.append(nxt)
                    out.append(Example(f"{path.name}:{line_no + i}", line[2:], expected))
    return out


def commands() -> list[tuple[str, str]]:
    """`llmsim ...` lines without a transcript, as (file:line, line)."""
    out = []
    for path in DOCS:
        for line_no, body in blocks(path):
            for i, line in enumerate(body.splitlines()):
                stripped = line.strip()
                if stripped.startswith("llmsim ") and "[" not in stripped and "..." not in stripped:
                    out.append((f"{path.name}:{line_no + i}", stripped))
    return out


def matches(expected: list[str], actual: list[str]) -> bool:
    pattern = ""
    for line in expected:
        if line.strip() == "...":
            pattern += r"(?:[^\n]*\n)*?"
        else:
            pattern += ".*?".join(re.escape(part) for part in line.rstrip().split("...")) + r"\n"
    return re.fullmatch(pattern, "".join(a.rstrip() + "\n" for a in actual), re.S) is not None


EXAMPLES = transcripts()


def test_the_docs_have_transcripts_to_check() -> None:
    assert {e.where.split(":")[0] for e in EXAMPLES} >= {"README.md", "scenario.md"}


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.where for e in EXAMPLES])
def test_a_documented_command_prints_what_the_docs_say(example: Example, tmp_path: Path, monkeypatch,
                                                       capsys) -> None:
    (tmp_path / "scenarios").symlink_to(REPO / "scenarios")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "120")
    argv = shlex.split(example.command)
    assert argv[0] == "llmsim"
    code = main(argv[1:])
    captured = capsys.readouterr()
    actual = (captured.err + captured.out).splitlines()
    assert matches(example.expected, actual), (f"{example.where}: $ {example.command}\nexpected:\n"
                                               + "\n".join(example.expected) + "\nactual:\n" + "\n".join(actual))
    wants_error = any(line.startswith("llmsim: error:") for line in example.expected)
    assert code == (2 if wants_error else 0), f"{example.where}: exit {code}"


@pytest.mark.parametrize("where, line", commands(), ids=[w for w, _ in commands()])
def test_a_documented_command_line_parses(where: str, line: str) -> None:
    argv = shlex.split(line, comments=True)
    try:
        build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        pytest.fail(f"{where}: `{line}` does not parse (exit {exc.code})")


def test_the_matcher_is_strict_where_the_docs_are_literal() -> None:
    assert matches(["a ... c", "..."], ["a b c", "x", "y"])
    assert not matches(["a b c"], ["a b d"])
    assert not matches(["a"], ["a", "extra line"])
