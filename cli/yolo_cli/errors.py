"""Errors the CLI turns into one clean message and an exit code (see ``docs/cli.md``)."""

from __future__ import annotations

# Exit codes, documented in docs/cli.md.
EXIT_OK = 0
EXIT_PARTIAL = 1  # finished, but some inputs were skipped (unreadable file, missing path)
EXIT_USAGE = 2  # bad command line (argparse uses 2 as well)
EXIT_UNREACHABLE = 3  # the predictor cannot be reached
EXIT_REJECTED = 4  # the predictor answered with an error (4xx/5xx); its message is shown
EXIT_INTERRUPTED = 130  # Ctrl-C: the output completed so far is written


class CliError(Exception):
    """A failure that ends the command: ``message`` is printed as ``error: message``."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class PredictorUnreachable(CliError):
    exit_code = EXIT_UNREACHABLE


class PredictorRejected(CliError):
    """The predictor answered with an error status; the message is the server's own."""

    exit_code = EXIT_REJECTED


class UnreadableInput(Exception):
    """One input (file or frame) cannot be read: it is skipped with a warning."""
