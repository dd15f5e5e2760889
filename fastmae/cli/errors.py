"""Errors the command line reports as one line (``fastmae: error: ...``) instead of a traceback."""


class CLIError(Exception):
    """A failure with a message meant for the user; ``main`` prints it and exits with ``exit_code``.

    Exit code 1 is for failures while running (a non-finite loss, an image that cannot be decoded).
    """

    exit_code = 1


class UsageError(CLIError):
    """Bad arguments or inputs the user can fix before running (exit code 2, as argparse uses)."""

    exit_code = 2
