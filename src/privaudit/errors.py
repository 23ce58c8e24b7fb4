"""Errors that privaudit raises on purpose, each mapped to a documented exit code.

Anything else that escapes is a bug: the CLI still prints one line, and ``--debug`` shows the
traceback.
"""

from __future__ import annotations

#: The gate passed (or warned, unless ``--fail-on warn``).
EXIT_OK = 0
#: The gate failed: the policy's verdict is ``fail`` (or ``warn`` with ``--fail-on warn``).
EXIT_GATE_FAILED = 1
#: Bad usage, configuration, policy or input data.
EXIT_USAGE = 2
#: An optional dependency that the input or option needs is not installed.
EXIT_MISSING_DEPENDENCY = 3
#: An unexpected internal error (a bug; please report it with ``--debug`` output).
EXIT_INTERNAL = 4
#: Interrupted by SIGINT/SIGTERM; nothing half-written was left behind.
EXIT_INTERRUPTED = 130


class PrivauditError(Exception):
    """Base class of every error privaudit raises on purpose.

    The message is one line that a user can act on; ``exit_code`` is what the CLI returns.
    """

    exit_code: int = EXIT_USAGE


class InputError(PrivauditError):
    """The input images, arrays or manifest cannot be used as given."""


class ConfigError(PrivauditError):
    """A command-line option, configuration file or policy file is invalid."""


class OutputError(PrivauditError):
    """The output location cannot be written without losing something the user made."""


class MissingDependencyError(PrivauditError):
    """An optional dependency is needed for this input or option.

    Example:
        >>> raise MissingDependencyError("pydicom", extra="dicom", needed_for="reading DICOM files")
    """

    exit_code = EXIT_MISSING_DEPENDENCY

    def __init__(self, package: str, *, extra: str | None, needed_for: str) -> None:
        self.package = package
        self.extra = extra
        command = f"pip install 'privaudit[{extra}]'" if extra else f"pip install '{package}'"
        super().__init__(f"{needed_for} needs the '{package}' package, which is not installed: {command}")


class MissingProgramError(PrivauditError):
    """An external program (not a Python package) is needed for an option, e.g. Chromium for
    ``--pdf``. The message names the program and how to install it."""

    exit_code = EXIT_MISSING_DEPENDENCY
