"""The ``fastmae`` command line: ``pretrain``, ``visualize``, ``mask``, ``export``, ``probe`` and ``stats``.

Errors the user can act on print as one line, ``fastmae: error: ...``, and exit with 2 (bad
arguments or inputs) or 1 (a failure while running); Ctrl-C exits with 130; no traceback.

A command is a module ``fastmae.cli.<name>`` with ``add_arguments(parser)`` and ``run(args)``,
listed in ``COMMANDS``.

``pretrain`` prints a first line (the model, epochs, data and output directory) before anything imports
torch, which takes seconds (``fastmae.cli.pretrain_options.plan_line``): in a fresh process, that
line comes within a second; where torch is already imported, the run's own first line comes at once
and it is left out.
"""

import argparse
import importlib
import os
import sys

from fastmae.cli.errors import CLIError, UsageError

# Each command: its module ``fastmae.cli.<name>`` (``add_arguments(parser)``, ``run(args)``) and
# its one-line help. A module is imported when its options are added to the parser (most import torch,
# which takes seconds), not at ``import fastmae.cli``: ``fastmae --help`` imports none of them.
COMMANDS = {
    "pretrain": "MAE pretraining (default: a tiny model on an embedded image set, about 2 min on 2 CPU cores)",
    "visualize": "the official demo's panels (original, masked, reconstruction, + visible)",
    "mask": "the masking lesson: MaskGenerator masks written as PNGs",
    "export": "a checkpoint's weights only, for timm, Hugging Face (ViTMAEForPreTraining) or as an encoder",
    "probe": "the official linear probe on a checkpoint's frozen encoder, against random initialisations",
    "stats": "per-channel mean and std of a data set (multi-band, 16-bit, float), for pretrain",
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


def _module(name):
    return importlib.import_module(f"fastmae.cli.{name}")


def build_parser(commands=tuple(COMMANDS)):
    """The parser for every subcommand, the options of those in ``commands`` added (each module adds
    its own; the others parse no option).

    Returns:
        ``(parser, {name: subparser})``, a subparser for each name of ``commands``.
    """
    parser = _Parser(prog="fastmae", description="Masked Autoencoder pretraining with fused kernels.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    subparsers = {}
    for name, summary in COMMANDS.items():
        if name not in commands:
            sub.add_parser(name, help=summary)
            continue
        module = _module(name)
        # The docstrings use reST ``literals``; --help shows them as plain text.
        subparsers[name] = sub.add_parser(name, help=summary,
                                          description=module.__doc__.strip().replace("``", ""),
                                          formatter_class=_HelpFormatter)
        module.add_arguments(subparsers[name])
    return parser, subparsers


def parse_args(argv=None):
    """Parse ``argv`` (default ``sys.argv[1:]``); an unknown option is reported against its
    subcommand's ``--help``.

    Returns:
        The namespace, with ``passed``: the ``dest`` names of the options given in ``argv``, as
        opposed to argparse defaults (``pretrain --resume`` restores the others from the
        checkpoint).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, subparsers = build_parser(_named(argv))
    args, extra = parser.parse_known_args(argv)
    if extra:
        subparsers[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    args.passed = _passed_options(argv)
    return args


def _named(argv):
    """The command ``argv`` names (its first word), as a tuple of none or one name."""
    return tuple(argv[:1]) if argv and argv[0] in COMMANDS else ()


def _passed_options(argv):
    """The ``dest`` of every option in ``argv`` (already parsed once, so valid): parsed again by
    parsers that have no defaults, the namespace holds only what ``argv`` gave."""
    parser, subparsers = build_parser(_named(argv))
    for sub in subparsers.values():
        for action in sub._actions:
            action.default = argparse.SUPPRESS
    given, _ = parser.parse_known_args(argv)
    return frozenset(vars(given)) - {"command"}


def main(argv=None):
    """Run ``fastmae`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        _announce(argv)
        args = parse_args(argv)
        return _module(args.command).run(args)
    except CLIError as e:
        if str(e):
            print(f"fastmae: {e.label}: {e}", file=sys.stderr)
        return e.exit_code
    except RuntimeError as e:
        if not _out_of_memory(e):
            raise
        print("fastmae: error: out of memory: lower --batch-size", file=sys.stderr)
        return 1
    except OSError as e:  # e.g. an unwritable --out or a full disk
        print(f"fastmae: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fastmae: interrupted", file=sys.stderr)
        return 130


def _announce(argv):
    """``pretrain``'s plan line, printed before torch is imported (rank 0 only under torchrun); nothing
    where torch is imported already (the run's own first line follows at once) or the words leave the
    plan open (``fastmae.cli.pretrain_options.plan_line``)."""
    if not argv or argv[0] != "pretrain" or "torch" in sys.modules or os.environ.get("RANK", "0") != "0":
        return
    from fastmae.cli.pretrain_options import plan_line

    line = plan_line(argv[1:])
    if line is not None:
        print(line, flush=True)


def _out_of_memory(error):
    """Whether ``error`` is torch's out-of-memory error (torch is imported by then, if it was raised)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(error, torch.OutOfMemoryError)
