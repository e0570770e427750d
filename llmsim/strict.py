"""The base of every user-facing pydantic model (scenario, serving block, plan file): unknown keys refused,
values frozen, and a YAML boolean never taken for a number."""

from __future__ import annotations

import math

import types
import typing
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.fields import FieldInfo

from llmsim.errors import KeyedValueError
from llmsim.wording import shown_number

# A seed every consumer of it takes: torch.manual_seed refuses 2**64 and above ("Overflow when unpacking long
# long", which failed the cpu backend's cases of a scenario that validated), numpy's Generator a negative one.
MAX_SEED = 2**64 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]

# The largest count or size a user file may give (a signed 32-bit index): a tensor dimension of the traced step, and
# every count the simulation turns into a float (a 400-digit max_num_seqs validated and then failed its case with
# "int too large to convert to float"). An absurd value is a validation error naming the bounds.
MAX_DIMENSION = 2**31 - 1
Count = Annotated[int, Field(ge=1, le=MAX_DIMENSION)]


def whole_number(value: Any) -> Any:
    """A float that is a whole number (1e4, 100.0) as the int it is, as pydantic takes one for an int field; any
    other value as it is. For the before-validators that check a count themselves (serving lengths, clients):
    without it they refused 1e4 where every Count field took it (trial 34)."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


_BOUNDS = {"Gt": ("gt", ">"), "Ge": ("ge", ">="), "Lt": ("lt", "<"), "Le": ("le", "<=")}


def _bounds_in(metadata: Any) -> list[str]:
    """'> 0', '<= 1' for each bound in a field's metadata, and in the metadata of the types it annotates (a
    list's or a union's `Annotated[float, Field(gt=0)]` items)."""
    found: list[str] = []
    for item in metadata:
        named = _BOUNDS.get(type(item).__name__)
        if named is not None:
            found.append(f"{named[1]} {shown_number(getattr(item, named[0]))}")  # 1e+06, not 1000000.0
        found += _bounds_in(getattr(item, "metadata", ()))
    return found


def field_range(field: FieldInfo) -> str:
    """'; allowed: > 0 and <= 1' for a field's bounds ('' where it has none): pydantic's message names only the
    bound that was broken ('Input should be greater than 0'), this names them all, and so do the messages for a
    boolean or a quoted number given to it."""
    bounds = _bounds_in(field.metadata)
    pending = list(getattr(field.annotation, "__args__", ()))
    # a union's or a list's members, to any depth (list[NonNegativeInt] | None), beside the field's own bounds
    # (`PositiveFloat | None = Field(le=10)`: > 0 from the member, <= 10 from the field)
    while pending:
        arg = pending.pop(0)
        bounds += _bounds_in(getattr(arg, "__metadata__", ()))
        pending += [a for a in getattr(arg, "__args__", ()) if not hasattr(arg, "__metadata__")]
    bounds = sorted(dict.fromkeys(bounds), key=lambda b: not b.startswith(">"))  # the lower bound first
    return f"; allowed: {' and '.join(bounds)}" if bounds else ""


def _accepts_bool(annotation: Any) -> bool:
    """Whether a field's type admits a boolean (bool itself, or bool inside a union, list or Literal)."""
    if annotation is bool or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return any(isinstance(a, bool) for a in typing.get_args(annotation))
    if origin is typing.Annotated:
        return _accepts_bool(typing.get_args(annotation)[0])
    return any(_accepts_bool(a) for a in typing.get_args(annotation)) if origin is not None or \
        isinstance(annotation, types.UnionType) else False


def _given_fields(model: type[BaseModel], data: Any) -> list[tuple[str, Any, FieldInfo]]:
    """(key, value, field) for each key of `data` (a model's raw input) that is a field of `model`."""
    if not isinstance(data, dict):
        return []
    return [(name, value, model.model_fields[name]) for name, value in data.items()
            if isinstance(name, str) and name in model.model_fields]


def boolean_for_a_number(model: type[BaseModel], data: Any) -> None:
    """Raise KeyedValueError where `data` (a model's raw input) gives a YAML boolean to a key of `model` that takes
    no boolean, or to a value of a mapping-valued key whose values take none (`peak_flops: {bfloat16: true}`):
    pydantic's lax mode reads true as 1 and false as 0."""
    for name, value, field in _given_fields(model, data):
        if isinstance(value, bool) and not _accepts_bool(field.annotation):
            raise KeyedValueError(name, f"{str(value).lower()} is a boolean, not a value of this key "
                                        f"(YAML reads true/false/yes/no/on/off as booleans)"
                                        f"{field_range(field) or _literal_choices(field.annotation)}")
        args = typing.get_args(field.annotation)
        if isinstance(value, dict) and typing.get_origin(field.annotation) is dict and not _accepts_bool(args[1]):
            for key, item in value.items():
                if isinstance(item, bool):
                    raise KeyedValueError(f"{name}.{key}", f"{str(item).lower()} is a boolean, not a number "
                                                           f"(YAML reads true/false/yes/no/on/off as booleans)")


def text_for_a_number(model: type[BaseModel], data: Any) -> None:
    """Raise KeyedValueError where `data` (a model's raw input) gives text to a key of `model` that takes only
    numbers, or to a value of a mapping of numbers (`peak_flops: {bfloat16: '1.2e15'}`): pydantic's lax mode reads
    the text "4" as 4, so a quoted number (usually a templating slip) would pass, and skip no bound."""
    for name, value, field in _given_fields(model, data):
        if isinstance(value, str) and _only_numeric(field.annotation):
            raise KeyedValueError(name, _text_message(value) + field_range(field))
        args = typing.get_args(field.annotation)
        if isinstance(value, dict) and typing.get_origin(field.annotation) is dict and len(args) == 2 \
                and _only_numeric(args[1]):
            for key, item in value.items():
                if isinstance(item, str):
                    raise KeyedValueError(f"{name}.{key}", _text_message(item))


def number_or_text_for_a_boolean(model: type[BaseModel], data: Any) -> None:
    """Raise KeyedValueError where `data` gives a number, text or null to a key of `model` that takes only a
    boolean: pydantic's lax mode reads 1/0 and the text "yes", "on", "1" as booleans."""
    for name, value, field in _given_fields(model, data):
        if not _only_bool(field.annotation):
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            raise KeyedValueError(name, f"{value} is a number, not a boolean (allowed: true, false)")
        if isinstance(value, str):
            # YAML's own unquoted yes/no/on/off are booleans already when they get here
            quoted = value.strip().lower() in ("true", "false", "yes", "no", "on", "off")
            raise KeyedValueError(name, f"{value!r} is text, not a boolean (allowed: true, false)"
                                        + ("; write it without quotes" if quoted else ""))
        if value is None and field.annotation is bool:
            raise KeyedValueError(name, "null is not a boolean (allowed: true, false)")


# Words YAML 1.1 reads as text where a reader may mean infinity or not-a-number (YAML's own are .inf and .nan)
_NON_FINITE_WORDS = frozenset({"inf", "+inf", "-inf", "infinity", "+infinity", "-infinity", "nan"})


def _text_message(value: str) -> str:
    """`'4' is text, not a number (write it without quotes)`; without the hint for text that is no number; `inf`
    and `nan` say that YAML reads them as text (trial 40: `rate=inf` got the bare 'is text')."""
    if value.strip().lower() in _NON_FINITE_WORDS:
        return (f"{value!r} is text, not a number (YAML writes infinity .inf and not-a-number .nan; a finite number "
                f"is needed here)")
    return f"{value!r} is text, not a number" + (" (write it without quotes)" if _numeric_text(value) else "")


class BooleansAreNotNumbers(BaseModel):
    """A file model (a hardware catalog entry) whose numbers refuse a YAML boolean (`boolean_for_a_number`) and
    quoted text (`text_for_a_number`), and whose booleans refuse numbers and text, as a scenario's do: a quoted '3.8' passed every bound of a catalog entry
    before (trial 36), since pydantic's lax mode reads it as 3.8 after the range check had nothing to say."""

    @model_validator(mode="before")
    @classmethod
    def _no_boolean_for_a_number(cls, data: Any) -> Any:
        boolean_for_a_number(cls, data)
        number_or_text_for_a_boolean(cls, data)
        text_for_a_number(cls, data)
        return data


class StrictModel(BooleansAreNotNumbers):
    """extra="forbid", frozen, finite floats; `zero: true`, `batch: yes` or `--set tp=true` are errors, not 1
    (pydantic's lax mode reads a bool as the integer 1 or 0, and YAML reads yes/no/on/off as booleans), and so are
    a quoted number for a number and a number or text for a boolean (the checks of BooleansAreNotNumbers)."""

    # allow_inf_nan=False: YAML reads .inf and .nan as floats; no key of a scenario, plan or serving block means
    # anything by them (`rate: .inf` passed `> 0` and `.nan` compares false with every bound)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _numeric_text(text: str) -> bool:
    """Whether `text` reads as a finite number ("4", "2.5e3"): a quoted number, for which the fix is the quotes.
    "inf" and "nan" are not (YAML spells them .inf / .nan, and no key takes them: the hint would mislead)."""
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _only_numeric(annotation: Any) -> bool:
    """Whether a field takes numbers (int or float, possibly constrained, in a union with None or a list of
    them) and no text: True for PositiveInt, float | list[float] | None; False for str, Literal, Any."""
    if annotation in (int, float):
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _only_numeric(typing.get_args(annotation)[0])
    if isinstance(annotation, types.UnionType) or origin is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(args) and all(_only_numeric(a) or typing.get_origin(_unannotated(a)) is list for a in args) \
            and any(_only_numeric(a) for a in args)
    return False


def _literal_choices(annotation: Any) -> str:
    """'; allowed: a, b' for a Literal key (or an optional one), '' for any other (trial 38: `optimizer: true`
    said what was wrong but not what the key takes)."""
    annotation = _unannotated(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        literals = [a for a in typing.get_args(annotation) if typing.get_origin(_unannotated(a)) is typing.Literal]
        annotation = _unannotated(literals[0]) if len(literals) == 1 else annotation
    if typing.get_origin(annotation) is not typing.Literal:
        return ""
    return "; allowed: " + ", ".join(str(a) for a in typing.get_args(annotation))


def _unannotated(annotation: Any) -> Any:
    """The type inside `Annotated[T, ...]` (a bounded list of node counts is still a list), else the type."""
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation


def _only_bool(annotation: Any) -> bool:
    """Whether a field takes a boolean and nothing else numeric (bool, or bool | None)."""
    if annotation is bool:
        return True
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args == [bool]
    return False


def sweep_repeats(values: list[Any]) -> str | None:
    """The message for a sweep list that repeats a value (`nodes: [1, 1]`, `rate: [2, 2.0]`), or None.

    A sweep runs one case per value, so a repeat would run and report the same case twice under one name;
    it is refused rather than silently dropped, since a repeat is usually a typo for another value."""
    seen: list[Any] = []
    repeats: list[Any] = []
    for v in values:  # a list, not a set: 2 and 2.0 are one rate, and the repeats keep the file's order
        if v not in seen:
            seen.append(v)
        elif v not in repeats:
            repeats.append(v)
    if not repeats:
        return None
    said = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in repeats)
    return (f"{said} {'is' if len(repeats) == 1 else 'are'} repeated; a sweep runs each value once "
            f"(allowed: distinct values)")
