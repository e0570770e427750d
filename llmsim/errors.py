"""User-facing errors. Each renders as one line: where the problem is, what is wrong, what is allowed."""

from __future__ import annotations


class LLMSimError(Exception):
    """Base for errors that the CLI prints as one line and turns into an exit code."""

    exit_code = 1


class ScenarioError(LLMSimError):
    """A scenario (or plan, or hardware) file that cannot be used as written.

    `key` is the dotted key path inside the file (e.g. ``strategies[2].tp``), so the message points
    the user at the exact line to change.
    """

    exit_code = 2

    def __init__(self, file: str | None, key: str | None, message: str) -> None:
        self.file = file
        self.key = key
        self.message = message
        super().__init__(self.__str__())

    def __str__(self) -> str:
        parts = [p for p in (self.file, self.key) if p]
        return one_line(": ".join(parts + [self.message]))


def one_line(text: str) -> str:
    """`text` with its control characters escaped (a newline as \\n): a key or value taken from a user's
    file may hold any character, and the error that names it must stay one line."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


class PluginError(LLMSimError):
    """A plugin that is missing, broken or registers a duplicate name."""

    exit_code = 2


def format_key_path(loc: tuple[str | int, ...]) -> str:
    """Turn a pydantic location tuple into the dotted path a user sees: ('strategies', 2, 'tp') -> strategies[2].tp."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out
