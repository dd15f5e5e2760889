"""``fastmae export``: the weights of a checkpoint for timm, Hugging Face, or as an encoder-only file.

Formats (``--format``), written by ``fastmae.convert.export``:

- ``timm``: the encoder as a state dict for timm's ``VisionTransformer`` (the official names:
  cls_token, pos_embed, patch_embed, blocks.N, norm; and head for a fine-tuned ViT). With
  ``--global-pool``, fc_norm at its fresh initialisation instead of norm, as the official
  fine-tuning starts. One ``torch.save`` file.
- ``encoder``: ``{'model': encoder}`` in the official names, the layout of the official
  mae_pretrain_vit_*.pth. ``fastmae.VisionTransformer.from_checkpoint`` loads it, and
  ``fastmae.load_official_checkpoint`` into an MAE (whose decoder then keeps its initialisation).
- ``hf``: a directory with config.json and model.safetensors that transformers'
  ``ViTMAEForPreTraining.from_pretrained`` loads with no missing or unexpected key (from a full MAE;
  needs transformers: pip install -e ".[interop]").

Only the weights are written: no optimizer, scaler, RNG state, epoch or run arguments. A file is
written under a temporary name beside --out and renamed into place, a directory built beside it and
swapped in: an export that fails midway leaves no partial file. An existing --out is refused unless
--force is given; even then, an hf directory is replaced only when it holds nothing but an earlier
export's two files, and neither the --checkpoint itself nor a pretraining run's own files
(checkpoint-last.pth, checkpoint-<epoch>.pth, log.txt) are ever replaced.
"""

import importlib.util
import os
import re

from fastmae import convert
from fastmae.state_dicts import inspect_state_dict, is_decoder_key
from fastmae.cli.argtypes import ratio
from fastmae.cli.run_state import load_checkpoint, without_decoder
from fastmae.cli.console import count
from fastmae.cli.errors import CLIError, UsageError
from fastmae.cli.rundir import holds_run

NEEDS_TRANSFORMERS = '--format hf needs transformers, the interop extra: pip install -e ".[interop]"'
RUN_FILES = re.compile(r"^(checkpoint-(last|\d+)\.pth|log\.txt)$")  # what a run directory's files are named
WHAT = {"timm": "the encoder of {} in timm's VisionTransformer names",
        "encoder": "the encoder of {} in the official encoder-only layout",
        "hf": "{} as a ViTMAEForPreTraining directory"}


def add_arguments(parser):
    parser.add_argument("--checkpoint", required=True,
                        help="a fastmae or official MAE checkpoint (loaded with weights_only): a full "
                        "MAE, encoder-only, or a fine-tuned ViT (timm only)")
    parser.add_argument("--format", required=True, choices=convert.EXPORT_FORMATS,
                        help="timm: a state dict for timm's VisionTransformer; encoder: the official "
                        "encoder-only layout; hf: a directory for ViTMAEForPreTraining.from_pretrained")
    parser.add_argument("--out", required=True,
                        help="the file (timm, encoder) or directory (hf) to write; missing parent "
                        "directories are made")
    parser.add_argument("--force", action="store_true",
                        help="overwrite an existing --out (default: refuse)")
    parser.add_argument("--global-pool", action="store_true",
                        help="timm only: fc_norm (fresh) instead of norm, the official fine-tuning "
                        "layout with global average pooling")
    parser.add_argument("--mask-ratio", type=ratio,
                        help="hf only: the mask_ratio written to config.json (0.75 when not given)")


def run(args):
    """Write the export; returns the exit code."""
    _check_options(args)
    _check_out(args)
    ckpt = load_checkpoint(args.checkpoint)
    try:
        info = inspect_state_dict(ckpt["model"])
    except ValueError as e:
        raise UsageError(f"cannot export {args.checkpoint}: {e}") from None
    _check_kind(args, info)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    global_pool = args.global_pool or bool(info.kind == "vit" and info.global_pool)
    mask_ratio = 0.75 if args.mask_ratio is None else args.mask_ratio
    try:
        convert.export(ckpt, args.format, args.out, global_pool=global_pool, mask_ratio=mask_ratio)
    except ValueError as e:
        raise UsageError(f"cannot export {args.checkpoint} as --format {args.format}: {e}") from None
    except ImportError:
        raise UsageError(NEEDS_TRANSFORMERS) from None
    except OSError as e:  # a full disk, no permission: nothing partial is left (convert.export)
        raise CLIError(f"cannot write {args.out}: {e.strerror or e}") from None
    print(_summary(args, ckpt))
    print(f"load it with: {_how_to_load(args, ckpt, info, global_pool)}")
    return 0


def _check_options(args):
    """Options that belong to another format, and the hf format without transformers."""
    if args.global_pool and args.format != "timm":
        raise UsageError(f"--global-pool applies to --format timm only, not {args.format}")
    if args.mask_ratio is not None and args.format != "hf":
        raise UsageError(f"--mask-ratio applies to --format hf only, not {args.format}")
    if args.format == "hf" and any(importlib.util.find_spec(m) is None for m in ("transformers", "safetensors")):
        raise UsageError(NEEDS_TRANSFORMERS)


def _check_out(args):
    """What --out may replace: nothing without --force; never the checkpoint or a run's own files."""
    out, fmt = args.out, args.format
    if os.path.realpath(out) == os.path.realpath(args.checkpoint):
        raise UsageError(f"--out {out} is the --checkpoint itself; choose another --out")
    directory = os.path.dirname(os.path.abspath(out))
    if RUN_FILES.match(os.path.basename(os.path.normpath(out))) and holds_run(directory):
        raise UsageError(f"--out {out} is a file of the pretraining run in {directory}; choose another name")
    if not os.path.lexists(out):
        return
    if fmt == "hf":
        if not os.path.isdir(out):
            raise UsageError(f"--out {out} is a file; --format hf writes a directory: choose another --out")
        names = set(os.listdir(out))
        if not names <= set(convert.HF_FILES):
            raise UsageError(f"--out {out} holds files other than an earlier export's "
                             f"({', '.join(convert.HF_FILES)}); choose a new or empty directory")
        if not names:
            return  # an empty directory: nothing to overwrite
    elif os.path.isdir(out):
        raise UsageError(f"--out {out} is a directory; --format {fmt} writes a file: name it, e.g. "
                         f"{os.path.join(out, fmt + '.pth')}")
    if not args.force:
        raise UsageError(f"{out} already exists; pass --force to overwrite it or choose another --out")


def _check_kind(args, info):
    """The formats a checkpoint without a decoder (or with a head) cannot be written in."""
    fmt = args.format
    if info.kind != "mae" and fmt == "hf":
        instead = "timm" if info.kind == "vit" else "timm or encoder"
        raise UsageError(f"{without_decoder(args.checkpoint, info.kind)}: --format hf writes a "
                         f"ViTMAEForPreTraining, which has one; export it as --format {instead}")
    if info.kind == "vit" and fmt == "encoder":
        raise UsageError(f"{without_decoder(args.checkpoint, info.kind)}: --format encoder writes an MAE "
                         "encoder without a head; export it as --format timm")
    if info.kind == "vit" and args.global_pool and not info.global_pool:
        raise UsageError(f"--global-pool: {args.checkpoint} was fine-tuned without global pooling (norm, "
                         "no fc_norm) and is written as it is; leave --global-pool out")
    if fmt == "hf" and info.factory is None:
        raise UsageError(f"cannot export {args.checkpoint} as --format hf: config.json needs the number of "
                         "heads, which the weights do not hold, and no fastmae factory has their shapes")


def _summary(args, ckpt):
    """``wrote OUT (size): ...; left out: ...``: what the export holds and what it did not take."""
    out = args.out
    if os.path.isdir(out):
        size = sum(os.path.getsize(os.path.join(out, name)) for name in os.listdir(out))
    else:
        size = os.path.getsize(out)
    left = []
    decoder = [k for k in ckpt["model"] if is_decoder_key(k)]
    if decoder and args.format != "hf":
        left.append(f"the decoder and mask_token ({count(len(decoder), 'entry', 'entries')})")
    left += [k for k in ckpt if k != "model"]
    note = f"; left out: {', '.join(left)}" if left else ""
    return f"wrote {out} ({size / 1e6:.1f} MB): {WHAT[args.format].format(args.checkpoint)}{note}"


def _how_to_load(args, ckpt, info, global_pool):
    """One call that loads what was written."""
    out = repr(args.out)
    if args.format == "hf":
        return f"transformers.ViTMAEForPreTraining.from_pretrained({out})"
    if args.format == "encoder":
        return (f"fastmae.VisionTransformer.from_checkpoint({out}), or fastmae.load_official_checkpoint({out}, "
                "model) into an MAE (its decoder keeps its initialisation)")
    classes = info.num_classes or 0
    name = convert.timm_model_name(ckpt)
    if name is None:  # the small fastmae sizes have no timm name
        return (f"fastmae.VisionTransformer.from_checkpoint({out}, num_classes={classes}), or timm's "
                "VisionTransformer built with these shapes (strictly)")
    options = f"num_classes={classes}" + (", global_pool='avg'" if global_pool else "")
    if info.img_size not in (None, 224):
        options += f", img_size={info.img_size}"
    return f"timm.create_model({name!r}, {options}).load_state_dict(torch.load({out}, weights_only=True))"
