"""The exceptions hpo raises on purpose.

Every :class:`HpoError` is a problem with the user's input or environment; its message names the
problem and the fix in one line. The CLI turns it into that line on stderr and exit code 2.
"""

from __future__ import annotations

from collections.abc import Iterable

# Exit codes of every command, read by `hpo run`'s pool from its workers: 2 and 0 end a worker's
# slot, the others restart it.
EXIT_DONE, EXIT_INPUT, EXIT_DEVICE, EXIT_STOPPED = 0, 2, 3, 130


class HpoError(Exception):
    """Base class: a user-fixable problem, reported as one line."""


class ConfigError(HpoError, ValueError):
    """The study file or an override is invalid."""


class DataError(HpoError):
    """The data is missing, unreadable, or differs from what the study was created with."""


class StorageError(HpoError):
    """The storage cannot be reached or does not hold what was expected."""


class DeviceError(Exception):
    """A CUDA error other than out-of-memory: the device may be unusable; the process exits
    so that its supervisor starts a fresh one."""


class WorkerStopping(BaseException):
    """SIGTERM: the running trial is failed and re-enqueued, then the worker exits."""


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; the trial is pruned with this reason, not crashed."""


def first_line(error: BaseException, limit: int | None = None) -> str:
    """The first line of a library's error message (some span pages), for a one-line error."""
    return (str(error).strip().splitlines() or [""])[0][:limit]


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """" (did you mean 'x'?)" for the known name closest to a mistyped one, or "" when none is
    close: a suggestion only where it is likely right."""
    import difflib

    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""
