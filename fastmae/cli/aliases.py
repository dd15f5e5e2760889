"""The official ``main_pretrain.py``'s option names, accepted by ``fastmae pretrain``.

An official command line runs unchanged: each underscore name (``--batch_size``, ``--data_path``,
...) is a hidden alias of fastmae's option (same destination, type and action), listed once in a
line at the end of ``--help`` rather than beside each option. The official names that are already
fastmae's (``--model``, ``--epochs``, ``--blr``, ``--lr``, ``--seed``, ``--resume``, ``--device``)
need nothing. The official options fastmae has no use for (its process group comes from torchrun's
environment, host memory is pinned on CUDA, training starts at ``--resume``'s epoch) are accepted and
ignored with one warning.
"""

import argparse

# official name -> the fastmae option it stands for
ALIASES = {
    "--data_path": "--data",
    "--batch_size": "--batch-size",
    "--accum_iter": "--accum-iter",
    "--input_size": "--input-size",
    "--mask_ratio": "--mask-ratio",
    "--norm_pix_loss": "--norm-pix-loss",
    "--weight_decay": "--weight-decay",
    "--min_lr": "--min-lr",
    "--warmup_epochs": "--warmup-epochs",
    "--output_dir": "--output-dir",
    "--log_dir": "--log-dir",
    "--num_workers": "--num-workers",
}
# official options with no effect here: name -> (takes a value, why it is ignored)
IGNORED = {
    "--start_epoch": (True, "training starts at the epoch after --resume's checkpoint"),
    "--pin_mem": (False, "host memory is pinned on CUDA"),
    "--no_pin_mem": (False, "host memory is pinned on CUDA"),
    "--world_size": (True, "the process group comes from torchrun's environment"),
    "--local_rank": (True, "the process group comes from torchrun's environment"),
    "--dist_on_itp": (False, "the process group comes from torchrun's environment"),
    "--dist_url": (True, "the process group comes from torchrun's environment"),
}
IGNORED_DEST = "official_ignored"  # where the ignored options' names are collected


def add_official_aliases(parser):
    """Add the hidden aliases and ignored options to ``parser`` (after its own options), and the
    line at the end of its ``--help`` that lists them."""
    actions = {opt: action for action in parser._actions for opt in action.option_strings}
    for alias, option in ALIASES.items():
        action = actions[option]
        kwargs = {"dest": action.dest, "help": argparse.SUPPRESS, "default": argparse.SUPPRESS}
        if action.nargs == 0:  # a flag
            kwargs["action"] = "store_true"
        else:
            kwargs.update(type=action.type, choices=action.choices, metavar=action.metavar)
        parser.add_argument(alias, **kwargs)
    for name, (takes_value, _) in IGNORED.items():
        parser.add_argument(name, dest=IGNORED_DEST, action=_Ignored, nargs=1 if takes_value else 0,
                            default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    names = ", ".join([*ALIASES, *IGNORED])
    parser.epilog = (f"The official main_pretrain.py names are accepted too: {names} (the last "
                     f"{len(IGNORED)} are ignored).")


class _Ignored(argparse.Action):
    """Collects the ignored options' names (with their values) in ``IGNORED_DEST``."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = list(getattr(namespace, self.dest, None) or [])
        seen.append(option_string + (f" {values[0]}" if values else ""))
        setattr(namespace, self.dest, seen)


def ignored_warning(args):
    """The one warning for the ignored official options passed, or None."""
    seen = getattr(args, IGNORED_DEST, None)
    if not seen:
        return None
    reasons = sorted({IGNORED[word.split()[0]][1] for word in seen})
    return f"ignoring {', '.join(seen)}: {'; '.join(reasons)}"
