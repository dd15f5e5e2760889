"""Errors the command line reports as one line (``fastmae: error: ...``) instead of a traceback."""


class CLIError(Exception):
    """A failure with a message meant for the user; ``main`` prints ``fastmae: {label}: {message}``
    and exits with ``exit_code``. An empty message prints nothing (under torchrun, the ranks other
    than 0, whose rank 0 reports).

    Exit code 1 is for failures while running (a non-finite loss, an image that cannot be decoded).
    """

    exit_code = 1
    label = "error"


class UsageError(CLIError):
    """Bad arguments or inputs the user can fix before running (exit code 2, as argparse uses)."""

    exit_code = 2


class Interrupted(CLIError):
    """Ctrl-C (SIGINT); the message says what was saved and how to go on (exit code 130, as a shell
    reports a process ended by SIGINT)."""

    exit_code = 130
    label = "interrupted"
