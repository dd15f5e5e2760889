"""The ``fastmae`` command line: ``pretrain``, ``visualize`` and ``mask``.

Errors the user can act on print as one line, ``fastmae: error: ...``, and exit with 2 (bad
arguments or inputs) or 1 (a failure while running); no traceback.
"""

import argparse
import sys

from fastmae.cli.errors import CLIError, UsageError

COMMANDS = {
    "pretrain": "MAE pretraining (default: a tiny model on an embedded image set, ~1 min on 2 CPU cores)",
    "visualize": "the official demo's panels (original, masked, reconstruction, + visible)",
    "mask": "the masking lesson: MaskGenerator masks written as PNGs",
}


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors become one-line ``UsageError``s instead of usage + exit."""

    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Module docstrings kept as written; defaults shown, except ``None`` and flags."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def build_parser():
    """The parser for every subcommand (each module adds its own options)."""
    from fastmae.cli import mask, pretrain, visualize

    parser = _Parser(prog="fastmae", description="Masked Autoencoder pretraining with fused kernels.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in (("pretrain", pretrain), ("visualize", visualize), ("mask", mask)):
        module.add_arguments(sub.add_parser(name, help=COMMANDS[name],
                                            description=module.__doc__.strip(),
                                            formatter_class=_HelpFormatter))
    return parser


def main(argv=None):
    """Run ``fastmae`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    from fastmae.cli import mask, pretrain, visualize

    commands = {"pretrain": pretrain.run, "visualize": visualize.run, "mask": mask.run}
    try:
        args = build_parser().parse_args(argv)
        return commands[args.command](args)
    except CLIError as e:
        print(f"fastmae: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # e.g. an unwritable --out or a full disk
        print(f"fastmae: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fastmae: interrupted", file=sys.stderr)
        return 130
