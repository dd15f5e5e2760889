"""The ``pretrain`` command's options, and the line that announces a run before torch is imported.

Nothing here imports torch: importing it takes seconds (2 to 5 on a 2-core machine), and
:func:`plan_line` lets ``fastmae pretrain`` say what it will do before that. ``fastmae.cli.pretrain``
builds its parser with :func:`add_arguments` and the options that need torch (the multi-band ones of
``fastmae.cli.bands``, the backends of ``fastmae.ops``).
"""

import argparse
import os

from fastmae.cli.aliases import add_official_aliases
from fastmae.cli.argtypes import nonnegative_float, nonnegative_int, positive_float, positive_int, ratio, seed
from fastmae.cli.console import count

DEFAULT_OUTPUT_DIR = os.path.join("output", "pretrain")

# The options whose default depends on --model: the image side is the model's own; the small CPU
# models take the quick demo's recipe, every other model the paper's (He et al. 2021, appendix
# A.1: base lr 1.5e-4, 40 warmup epochs, 800 epochs; weight decay 0.05 for both, the
# argparse default). The paper's models leave --norm-pix-loss off unless passed, as the official
# main_pretrain.py does, so an official command line trains what it trains there; the demo turns it
# on: in its few CPU minutes it is what makes the encoder's features beat a random encoder's
# (benchmarks/NOTES.md, "The default run").
DEMO_MODELS = ("mae_vit_tiny_patch4", "mae_vit_micro_patch4")
DEMO_RECIPE = {"blr": 5e-3, "warmup_epochs": 3, "epochs": 28, "norm_pix_loss": True}
PAPER_RECIPE = {"blr": 1.5e-4, "warmup_epochs": 40, "epochs": 800, "norm_pix_loss": False}
# fastmae.MODELS's names, for the line printed before torch (and fastmae.model) is imported; a test
# holds them equal.
MODEL_NAMES = ("mae_vit_base_patch16", "mae_vit_large_patch16", "mae_vit_huge_patch14",
               "mae_vit_base_patch16_dec512d8b", "mae_vit_large_patch16_dec512d8b",
               "mae_vit_huge_patch14_dec512d8b", *DEMO_MODELS)
# What marks a run directory (fastmae.cli.rundir, which imports torch, takes these).
RUN_MARKERS = ("checkpoint-last.pth", "log.txt")


def add_arguments(p, data_options=None, backends=None):
    """``pretrain``'s options, in four groups, and the official names (``fastmae.cli.aliases``).

    Args:
        p: the parser.
        data_options: adds the multi-band, 16-bit and float options to the data group
            (``fastmae.cli.bands.add_arguments``); None leaves them out.
        backends: the ``--backend`` choices (``fastmae.ops.BACKENDS``); None accepts any name.
    """
    model = p.add_argument_group("model")
    model.add_argument("--model", default="mae_vit_tiny_patch4", help="a name in fastmae.MODELS")
    model.add_argument("--input-size", type=positive_int,
                       help="image side in pixels; default: the model's own (32 for the demo models "
                       f"{' and '.join(DEMO_MODELS)}, 224 for the official ones)")
    model.add_argument("--mask-ratio", type=ratio, default=0.75, help="fraction of patches removed")
    model.add_argument("--norm-pix-loss", action=argparse.BooleanOptionalAction,
                       help="per-patch normalised pixels as targets; default on for the demo models, "
                       "off for the others (as the official main_pretrain.py)")
    model.add_argument("--backend", default="auto", choices=backends,
                       help="op implementation passed to the model")
    add_compile_arguments(model)

    data = p.add_argument_group("data")
    data.add_argument("--data", help="directory of .jpg/.jpeg/.png images, searched recursively "
                      "(ImageFolder layout or flat), or WebDataset tar shards: a directory of .tar "
                      "files or a brace pattern such as shards/train-{000000..000146}.tar (pip "
                      "install -e \".[shards]\"); default: the embedded procedural set")
    data.add_argument("--num-images", type=positive_int, default=2048,
                      help="size of the procedural set (ignored with --data)")
    if data_options is not None:
        data_options(data)
    data.add_argument("--num-workers", type=nonnegative_int,
                      help="data loader processes (persistent across epochs); default: the cores this "
                      "process may use, shared by the processes of the node, one left for training "
                      "(fastmae.data.default_num_workers); 0 on CPU")

    optim = p.add_argument_group("optimisation")
    optim.add_argument("--batch-size", type=positive_int, default=64,
                       help="images per process per iteration")
    optim.add_argument("--accum-iter", type=positive_int, default=1,
                       help="iterations per optimizer step")
    demo, paper = DEMO_RECIPE, PAPER_RECIPE
    optim.add_argument("--epochs", type=positive_int, help="epochs to train in all; default "
                       f"{demo['epochs']} for the demo models, {paper['epochs']} (the paper's) for the others")
    optim.add_argument("--warmup-epochs", type=nonnegative_float,
                       help="epochs of linear lr warmup before the cosine decay; default "
                       f"{demo['warmup_epochs']:g} for the demo models, {paper['warmup_epochs']:g} for the others")
    optim.add_argument("--blr", type=positive_float,
                       help="base lr: lr = blr * batch-size * accum-iter * processes / 256; default "
                       f"{demo['blr']:g} for the demo models, {paper['blr']:g} (the paper's) for the others")
    optim.add_argument("--lr", type=positive_float, help="absolute lr (overrides --blr)")
    optim.add_argument("--min-lr", type=nonnegative_float, default=0.0,
                       help="lr at the end of the cosine")
    optim.add_argument("--weight-decay", type=nonnegative_float, default=0.05,
                       help="AdamW weight decay (not on biases and 1-D parameters)")
    optim.add_argument("--amp", choices=("bf16", "fp16", "off"),
                       help="autocast dtype; default bf16 on CUDA, off on CPU (fp16 adds a GradScaler)")

    run = p.add_argument_group("run")
    run.add_argument("--seed", type=seed, default=0,
                     help="seed of the data order, augmentation and masking (process r adds r)")
    run.add_argument("--resume", help="checkpoint to continue from (fastmae or official); the "
                     "model, data and optimisation options not passed come from it. A checkpoint of "
                     "weights only, or a Hugging Face ViTMAE directory, starts a new run from its weights")
    run.add_argument("--output-dir",
                     help="where checkpoints, log.txt and reconstructions.png go; a directory that "
                     "holds a run is only continued, with --resume of a checkpoint inside it. "
                     "Default: the --resume file's directory, else the first of "
                     f"{DEFAULT_OUTPUT_DIR}, {DEFAULT_OUTPUT_DIR}-2, ... that holds no run")
    run.add_argument("--save-every", type=positive_int, default=20,
                     help="also keep checkpoint-<epoch>.pth every N epochs (a hard link to that "
                     "epoch's checkpoint-last where the file system allows)")
    run.add_argument("--print-freq", type=positive_int, default=20,
                     help="progress line every N iterations")
    run.add_argument("--device", help="cuda, cuda:N or cpu; default cuda when available")
    run.add_argument("--threads", type=positive_int,
                     help="CPU threads of torch's ops while training (torch.set_num_threads; restored "
                     "after); default torch's own (the cores, or OMP_NUM_THREADS). A resumed run keeps "
                     "its count: another count changes the last digits of the losses")
    run.add_argument("--log-dir", help="also write TensorBoard scalars there (train_loss and lr per "
                     "optimizer step, as the official code); needs the tensorboard extra: pip install "
                     "-e \".[tensorboard]\"")
    add_official_aliases(p)


def add_compile_arguments(group):
    """``--compile`` / ``--no-compile`` and ``--compile-mode``, and what TF32 is left at."""
    group.add_argument("--compile", action=argparse.BooleanOptionalAction,
                       help="torch.compile the model; default on CUDA, off on CPU. float32 matmuls "
                       "use TF32 only where your PyTorch settings say so "
                       "(torch.backends.cuda.matmul.allow_tf32, torch.set_float32_matmul_precision): "
                       "fastmae leaves them as they are")
    group.add_argument("--compile-mode", help="torch.compile's mode: one of your torch's "
                       "torch._inductor.list_mode_options(), e.g. reduce-overhead (CUDA graphs), "
                       "max-autotune; default torch's")


def train_split(data):
    """``DATA/train`` when ``data`` is a directory holding ``train/`` and ``val/`` (the official
    ImageNet layout, whose ``train/`` ``main_pretrain.py`` reads), else ``data``."""
    if all(os.path.isdir(os.path.join(data, part)) for part in ("train", "val")):
        return os.path.join(data, "train")
    return data


def holds_run(directory):
    """Whether ``directory`` holds a pretraining run (a ``checkpoint-last.pth`` or a ``log.txt``)."""
    return any(os.path.exists(os.path.join(directory, name)) for name in RUN_MARKERS)


def first_free_output_dir():
    """The first of output/pretrain, output/pretrain-2, ... that holds no run."""
    path, i = DEFAULT_OUTPUT_DIR, 1
    while holds_run(path):
        i += 1
        path = f"{DEFAULT_OUTPUT_DIR}-{i}"
    return path


class _Unsure(Exception):
    """The arguments leave the plan open to this module: no line before torch."""


class _PlanParser(argparse.ArgumentParser):
    def error(self, message):
        raise _Unsure(message)


def plan_line(argv):
    """What ``fastmae pretrain`` with ``argv`` (the words after ``pretrain``) will train, on which
    data, for how many epochs and into which directory, as one line, without importing torch; None
    when the words leave any of that open here: ``--resume`` (the checkpoint holds the plan),
    ``--help``, an abbreviated or torch-side option (the multi-band ones), a value the full parser
    would refuse. The full parse decides and reports errors; this line only speaks first."""
    parser = _PlanParser(add_help=False, allow_abbrev=False)
    add_arguments(parser)
    try:
        args, unknown = parser.parse_known_args(argv)
    except (_Unsure, argparse.ArgumentError):
        return None
    if unknown or args.resume or args.model not in MODEL_NAMES:
        return None
    recipe = DEMO_RECIPE if args.model in DEMO_MODELS else PAPER_RECIPE
    epochs = args.epochs or recipe["epochs"]
    data = train_split(args.data) if args.data else f"the procedural set ({count(args.num_images, 'image')})"
    output_dir = args.output_dir or first_free_output_dir()
    return (f"fastmae pretrain: {args.model}, {count(epochs, 'epoch')} on {data}, into {output_dir}; "
            "importing PyTorch...")
