"""The ``pretrain`` command's run configuration: its options resolved once, then frozen.

:func:`resolve` fills in what the options leave open (the lr from ``--blr``, the autocast dtype and
the loader workers for the device, the output directory) and, on a ``--resume`` that continues a
run, takes each trajectory option the command line does not pass from the checkpoint's stored
arguments: ``fastmae pretrain --resume DIR/checkpoint-last.pth`` continues the run as it was
started, and only options passed on this command line can change it.
"""

import dataclasses
import inspect
import os
import shlex

import torch

from fastmae.cli import distributed
from fastmae.cli.aliases import IGNORED_DEST
from fastmae.cli.distributed import DistInfo
from fastmae.cli.errors import UsageError
from fastmae.cli.pretrain_options import DEMO_MODELS, DEMO_RECIPE, PAPER_RECIPE, first_free_output_dir, train_split
from fastmae.data import default_num_workers

# Options that shape the training trajectory: a resume that changes them cannot continue it exactly.
# On resume, those the command line does not pass come from the checkpoint.
TRAJECTORY_OPTIONS = ("model", "input_size", "mask_ratio", "norm_pix_loss", "data", "num_images",
                      "batch_size", "accum_iter", "epochs", "warmup_epochs", "blr", "lr", "min_lr",
                      "weight_decay", "amp", "seed", "demo", "in_chans", "mean", "std", "vflip", "layout",
                      "threads")
# The on/off options that have a --no- form (their default depends on the device or the model).
NEGATABLE = ("compile", "norm_pix_loss")
# The options the lr is computed from: the checkpoint's lr is kept only when none of them is passed.
LR_OPTIONS = ("lr", "blr", "batch_size", "accum_iter")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a pretraining run needs to know, in the order of ``pretrain --help``."""

    # model
    model: str
    input_size: int
    mask_ratio: float
    norm_pix_loss: bool
    backend: str
    compile: bool  # default: on CUDA
    compile_mode: str | None  # torch.compile's mode; None: torch's default
    # data
    data: str | None  # None: the procedural set
    num_images: int
    num_workers: int
    # optimisation
    batch_size: int  # per process
    accum_iter: int
    epochs: int
    warmup_epochs: float
    blr: float
    lr: float  # the absolute peak lr, from --lr or --blr
    min_lr: float
    weight_decay: float
    amp: str  # "bf16", "fp16" or "off"
    # run
    seed: int
    resume: str | None
    output_dir: str
    save_every: int
    print_freq: int
    device: torch.device
    dist: DistInfo
    threads: int | None = None  # torch.set_num_threads while training; None: torch's own
    # multi-band, 16-bit and float data (fastmae.cli.bands): resolved from the data once it is opened
    demo: str | None = None  # the embedded set without --data: "shapes" (None) or "multiband"
    in_chans: int | None = None
    mean: list | None = None  # per channel, in resized_crop's units
    std: list | None = None
    source_dtype: str | None = None  # uint8, uint16 or float32: the unit of mean/std (exports need it)
    stats: str | None = None  # a fastmae stats file
    layout: str = "auto"  # of .npy files
    vflip: bool = False

    @property
    def eff_batch(self):
        """Images per optimizer step over all processes."""
        return self.batch_size * self.accum_iter * self.dist.world_size

    @property
    def amp_dtype(self):
        """The autocast dtype, or None for float32."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[self.amp]

    @property
    def last_path(self):
        return os.path.join(self.output_dir, "checkpoint-last.pth")

    @property
    def log_path(self):
        return os.path.join(self.output_dir, "log.txt")

    def stored_args(self):
        """The ``args`` a checkpoint stores: every option as a plain value, so the file loads with
        ``weights_only=True`` and a resume can restore them."""
        args = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("device", "dist")}
        args["device"] = str(self.device)
        return args


def resolve(args, dist, device, stored=None):
    """The run configuration of the parsed ``args`` for this process.

    Args:
        args: the parsed namespace; ``args.passed`` names the options given on the command line
            (``fastmae.cli.parse_args`` sets it). Without it, every option counts as passed.
        dist: this process's place in the (torchrun) group.
        device: the resolved ``--device``.
        stored: the stored arguments of the checkpoint the run continues (``{}`` or None for a new
            run): each trajectory option not passed is taken from them; the lr only when none of
            ``--lr``, ``--blr``, ``--batch-size`` and ``--accum-iter`` is passed.
    """
    passed = getattr(args, "passed", None)
    options = {f.name: getattr(args, f.name, f.default) for f in dataclasses.fields(RunConfig)
               if f.name not in ("device", "dist")}
    if stored and passed is not None:
        lr_passed = any(k in passed for k in LR_OPTIONS)
        for k in TRAJECTORY_OPTIONS:
            if k in stored and k not in passed and not (k == "lr" and lr_passed):
                options[k] = stored[k]
    for k, value in model_defaults(options["model"]).items():
        if options[k] is None:
            options[k] = value
    if options["data"] is not None:
        options["data"] = train_split(options["data"])
    if options["lr"] is None:
        eff_batch = options["batch_size"] * options["accum_iter"] * dist.world_size
        options["lr"] = options["blr"] * eff_batch / 256
    if options["amp"] is None:
        options["amp"] = _default_amp(device)
    options["compile"] = _compile_option(options["compile"], options["compile_mode"], device)
    if options["num_workers"] is None:
        # CPU: the training process needs the cores itself (and the demo's images are tiny)
        options["num_workers"] = 0 if device.type == "cpu" else default_num_workers()
    if options["output_dir"] is None:
        options["output_dir"] = _default_output_dir(options["resume"], dist)
    return RunConfig(**options, device=device, dist=dist)


def model_defaults(model):
    """The defaults of ``--input-size`` (the factory's own image side), ``--blr``,
    ``--warmup-epochs``, ``--epochs`` and ``--norm-pix-loss`` (the demo's recipe for :data:`DEMO_MODELS`, the paper's
    for the others) for the factory ``model``; a one-line ``UsageError`` for an unknown name."""
    import fastmae

    if model not in fastmae.MODELS:
        raise UsageError(f"unknown model '{model}'; available: {', '.join(fastmae.MODELS)}")
    return {"input_size": factory_img_size(model), **(DEMO_RECIPE if model in DEMO_MODELS else PAPER_RECIPE)}


def factory_img_size(model):
    """The image side the factory ``model`` builds by default, read from its configuration: building
    it, even on the meta device, takes seconds (the position tables' first meta ``arange``)."""
    import fastmae

    make = fastmae.MODELS[model]
    config = inspect.getclosurevars(make).nonlocals.get("config", {})
    side = config.get("img_size", inspect.signature(fastmae.MaskedAutoencoderViT).parameters["img_size"].default)
    return side if isinstance(side, int) else side[0]


def changed_options(run, args, stored):
    """The trajectory options passed on the command line (all of them without ``args.passed``)
    whose value differs from the checkpoint's ``stored`` arguments, as ``--option`` names."""
    passed = getattr(args, "passed", None)
    return [f"--{k.replace('_', '-')}" for k in TRAJECTORY_OPTIONS
            if k in stored and (passed is None or k in passed) and stored[k] != getattr(run, k)]


def resume_command(run, args, checkpoint, stored):
    """The command line that continues ``run`` from ``checkpoint``, whose stored arguments are
    ``stored``: ``--resume`` and the options passed to this run that a bare resume would not
    restore (the device's, the loader's..., and trajectory options that differ from ``stored``);
    ``--output-dir`` only when the run's directory is not the checkpoint's."""
    passed = getattr(args, "passed", None)
    words = ["--resume", checkpoint]
    if os.path.realpath(os.path.dirname(checkpoint) or ".") != os.path.realpath(run.output_dir):
        words += ["--output-dir", run.output_dir]
    for name, value in vars(args).items():
        restored = name in TRAJECTORY_OPTIONS and stored.get(name) == getattr(run, name)
        if (name in ("command", "passed", "resume", "output_dir", IGNORED_DEST) or value is None
                or (value is False and name not in NEGATABLE)  # --no-compile is passed on purpose
                or (passed is not None and name not in passed) or restored):
            continue
        flag = "--" + name.replace("_", "-")
        if name in NEGATABLE:
            words.append(flag if value else "--no-" + flag[2:])
            continue
        words += [flag] if value is True else [flag, str(value)]
    command = shlex.join(["fastmae", "pretrain", *words])
    if run.dist.enabled:
        command = command.replace("fastmae", "torchrun <the same torchrun options> -m fastmae", 1)
    return command


def _compile_option(compile, mode, device):
    """``--compile`` resolved: on by default on CUDA, off on the CPU; ``--compile-mode`` needs it."""
    if mode is not None and compile is False:
        raise UsageError(f"--compile-mode {mode} needs torch.compile, and --no-compile was passed")
    if compile is None:
        compile = device.type == "cuda"
        if mode is not None and not compile:
            raise UsageError(f"--compile-mode {mode} needs torch.compile, off on {device.type} unless "
                             "--compile is passed")
    if mode is not None:
        import torch._inductor  # what torch.compile imports anyway (seconds): only with --compile-mode
        modes = list(torch._inductor.list_mode_options())
        if mode not in modes:
            raise UsageError(f"--compile-mode {mode} is not one of this torch's modes: {', '.join(modes)}")
    return compile


def _default_amp(device):
    if device.type != "cuda":
        return "off"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _default_output_dir(resume, dist):
    """Where a run without ``--output-dir`` writes: beside the ``--resume`` checkpoint, else the
    first of output/pretrain, output/pretrain-2, ... that holds no run, so running the default
    command twice never refuses nor overwrites. Rank 0 decides, for every rank (the others would
    race its first write)."""
    if resume:
        return os.path.dirname(resume) or "."
    return distributed.from_main(first_free_output_dir, dist)
