"""Words of messages said once: counts in sentences ('1 strategy', '2 strategies', '1,024 devices'), a
wrong value as an error quotes it (`shown_value`), and a value a Literal key does not take (`literal_error`)."""

from __future__ import annotations

import ast
from typing import Any

# Nouns llmsim counts whose plural is not noun + "s".
IRREGULAR = {"strategy": "strategies", "process": "processes", "entry": "entries", "batch": "batches",
             "micro-batch": "micro-batches"}


def count(n: float, noun: str, plural: str | None = None) -> str:
    """`n` and the noun in the right number: count(1, 'case') = '1 case', count(2048, 'device') = '2,048 devices'.
    Without `plural`, a phrase's last word takes the plural ('backend setting' -> 'backend settings')."""
    value = int(n) if float(n).is_integer() else n
    if value == 1:
        return f"1 {noun}"
    if plural is None:
        head, _, last = noun.rpartition(" ")
        many = IRREGULAR.get(last, last + "s")
        plural = f"{head} {many}" if head else many
    return f"{value:,} {plural}"


SHOWN_VALUE_CHARS = 60  # a wrong value is quoted up to this many characters: the error stays one short line
_YAML_SPELLING = {None: "null", True: "true", False: "false"}  # how the user wrote these in YAML or --set


def shown_value(value: object) -> str:
    """A wrong value as an error quotes it: its repr, cut to SHOWN_VALUE_CHARS; YAML's null, true and false as
    the user wrote them (not Python's None, True, False)."""
    text = _YAML_SPELLING[value] if isinstance(value, (bool, type(None))) else repr(value)
    return text if len(text) <= SHOWN_VALUE_CHARS else text[:SHOWN_VALUE_CHARS - 1] + "…"


def clipped(text: str, chars: int = 40) -> str:
    """`text` cut to `chars` characters, ending in "..." where cut: a damaged file's value quoted in a one-line
    error (results.read_rows, calibrate.observations)."""
    return text if len(text) <= chars else text[:chars - 3] + "..."


def literal_choices(err: dict[str, Any]) -> str:
    """The values a Literal key allows, as the other errors list them (`fused, sglang, sglang-rocm`; YAML's
    true / false / null as the user writes them), from pydantic's literal_error context, which holds them as
    Python reprs (`'fused', 'sglang' or 'sglang-rocm'`); that text itself where it does not read back."""
    expected = str((err.get("ctx") or {}).get("expected", ""))
    head, sep, last = expected.rpartition(" or ")
    try:
        values = ast.literal_eval(f"[{head}, {last}]" if sep else f"[{expected}]")
    except (ValueError, SyntaxError):
        return expected
    return ", ".join(v if isinstance(v, str) else shown_value(v) for v in values)


def literal_error(err: dict[str, Any]) -> str:
    """A value a Literal key does not take, in the one form every such key's error has (docs/scenario.md,
    "Validity rules"): `'x' is not one of the allowed values (allowed: a, b, c)`; pydantic would say `Input should be
    'a', 'b' or 'c'`."""
    given, allowed = err.get("input"), literal_choices(err)
    hint = ""
    if isinstance(given, str) and len(given) >= 2 and given[0] == given[-1] and given[0] in "'\"" \
            and given[1:-1] in allowed.split(", "):   # "'foreach'": the quotes are part of the value
        hint = "; write it without the inner quotes"
    return f"{shown_value(given)} is not one of the allowed values (allowed: {allowed}){hint}"


# pydantic's bound error types: (the ctx key holding the bound, how a message writes it)
_BOUND_ERRORS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="), "less_than": ("lt", "<"),
                 "less_than_equal": ("le", "<=")}


def shown_number(value: object) -> str:
    """A number as a bound error shows it: -5e+12 and 0, not -5000000000000.0 and 0.0."""
    return f"{value:g}" if isinstance(value, float) else shown_value(value)


def shown_input(value: object) -> str:
    """A number the user gave, echoed as written where that is short (3.0, 0.25), in shown_number's form where its
    repr runs long (-5e+12, not -5000000000000.0); anything else as shown_value."""
    if isinstance(value, float):
        text = repr(value)
        return text if len(text) <= 12 and "e" not in text else f"{value:g}"
    return shown_value(value)


def bound_error(err: dict[str, Any]) -> str | None:
    """A number past the one bound pydantic names, as the other range errors read (`-3: out of range; allowed:
    >= 0`; pydantic: 'Input should be greater than or equal to 0'); None for any other error. Where the field's
    model is at hand, config.out_of_range names every bound of the field instead."""
    bound = _BOUND_ERRORS.get(err.get("type", ""))
    ctx = err.get("ctx") or {}
    if bound is None or bound[0] not in ctx:
        return None
    return f"{shown_number(err.get('input'))}: out of range; allowed: {bound[1]} {shown_number(ctx[bound[0]])}"


def number_error(err: dict[str, Any]) -> str | None:
    """A number a key cannot take, in llmsim's words: a non-finite one (`nan: expected a finite number`; YAML's .nan
    / .inf) or one past a bound (bound_error); None for any other error."""
    if err.get("type") == "finite_number":
        return f"{shown_number(err.get('input'))}: expected a finite number"
    return bound_error(err)


def whole_number_option(option: str, text: str, low: int, high: int) -> tuple[int | None, str | None]:
    """A command-line option that takes a whole number in [low, high], read from `text`: (the number, None), or
    (None, the one-line problem: `--steps '0': allowed: a whole number from 1 to 20`)."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        return None, f"{option} {text!r}: allowed: a whole number from {low} to {high}"
    return value, None
