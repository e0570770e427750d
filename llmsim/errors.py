"""User-facing errors and the exit codes of the `llmsim` command (README "Exit codes").

Each error renders as one line: where the problem is, what is wrong, what is allowed. Every LLMSimError
is about something the user gave (a file, a key, a command-line argument, a folder) and exits with
EXIT_BAD_INPUT; EXIT_FAILED is left to what llmsim could not finish for reasons of its own or the
machine's (a full disk, a bug: those print a traceback).
"""

from __future__ import annotations

import errno

EXIT_OK = 0
EXIT_FAILED = 1            # llmsim could not finish: the machine (disk full, I/O error) or a bug
EXIT_BAD_INPUT = 2         # what the user gave cannot be used (argparse's own usage errors exit 2 as well)
EXIT_INTERRUPTED = 130     # Ctrl-C: 128 + SIGINT, the shell's convention; rows finished so far are kept

# OSError numbers that mean "this path, as given, cannot be used" (the user's input), not "the machine failed".
_PATH_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.EISDIR,
                          errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP})


class LLMSimError(Exception):
    """Base for errors that the CLI prints as one line and turns into an exit code (bad input: 2)."""

    exit_code = EXIT_BAD_INPUT


class ScenarioError(LLMSimError):
    """A scenario (or plan, or hardware) file that cannot be used as written.

    `key` is the dotted key path inside the file (e.g. ``strategies[2].tp``), so the message points
    the user at the exact line to change.
    """

    def __init__(self, file: str | None, key: str | None, message: str) -> None:
        self.file = file
        self.key = key
        self.message = message
        super().__init__(self.__str__())

    def __reduce__(self) -> tuple:  # picklable as built (a task's error crosses to the parent: llmsim.executor)
        return type(self), (self.file, self.key, self.message)

    def __str__(self) -> str:
        parts = [p for p in (self.file, self.key) if p]
        return one_line(": ".join(parts + [self.message]))


class KeyedValueError(ValueError):
    """A rule of a file model (a pydantic validator) that knows which key breaks it: pydantic only knows the
    model that raised, so config.validation_error appends `key` to that model's path (``workload.model`` +
    ``kv_heads``). Raised inside validators only; the user sees a ScenarioError."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(message)

    def __reduce__(self) -> tuple:
        return type(self), (self.key, self.message)


def one_line(text: str) -> str:
    """`text` with its control characters escaped (a newline as \\n): a key or value taken from a user's
    file may hold any character, and the error that names it must stay one line."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


class UsageError(LLMSimError):
    """A command-line argument that cannot be used: `where` is the command or flag (``report``, ``--out``)."""

    def __init__(self, where: str, message: str) -> None:
        self.where = where
        self.message = message
        super().__init__(one_line(f"{where}: {message}"))  # a path given on the command line may hold a newline

    def __reduce__(self) -> tuple:  # picklable as built (llmsim.executor)
        return type(self), (self.where, self.message)


class PluginError(LLMSimError):
    """A plugin that is missing, broken or registers a duplicate name."""


def path_error(where: str, exc: OSError) -> LLMSimError | None:
    """A UsageError for an OSError caused by a path as the user gave it (no permission, not a folder, ...);
    None for the machine's own failures (a full disk, an I/O error), which are not the user's input."""
    if exc.errno not in _PATH_ERRNOS:
        return None
    path = f"{exc.filename}: " if exc.filename else ""
    return UsageError(where, f"{path}{exc.strerror or exc}")


def machine_error(exc: OSError) -> str:
    """One line for an OSError that is the machine's, not the input's (path_error gave None): what failed, where,
    and that the rows saved before it stay saved (results are written row by row, llmsim.results)."""
    path = f"{exc.filename}: " if exc.filename else ""
    return (f"{path}{exc.strerror or exc} (errno {exc.errno}; a failure of this machine, not of the input; rows saved "
            f"before it are kept, and `llmsim run SCENARIO.yaml --resume` finishes a run once it is fixed)")


def format_key_path(loc: tuple[str | int, ...]) -> str:
    """Turn a pydantic location tuple into the dotted path a user sees: ('strategies', 2, 'tp') -> strategies[2].tp."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out
