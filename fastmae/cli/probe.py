"""``fastmae probe``: the official linear probe on a checkpoint's frozen encoder, beside the same
probe on randomly initialised encoders of the same shape, reporting held-out top-1.

The probe is ``fastmae.linear_probe`` (``fastmae.linprobe``: the official ``main_linprobe.py``
recipe, BatchNorm without affine before the head, LARS, 90 epochs; its features are computed once
from the images as given). The features are the cls token after the encoder's last norm, as the
official probe reads them, or, for a ViT fine-tuned with global pooling (``fc_norm``, no ``norm``),
the pooled patch tokens after ``fc_norm`` (its random baselines then pool too, with a fresh
``fc_norm``). The images are resized as the official evaluation does (shorter side to
``input size / 0.875``, bicubic, centre crop, ImageNet normalisation), all held in memory as float32
(about 600 KB an image at 224 px: a probe set, not ImageNet).

Data:

- by default the embedded procedural set of the default ``fastmae pretrain`` run, with its labels
  (``fastmae.data.ProceduralImages.label``: stripes or not, times the kind of the topmost shape; 6
  classes). The probe trains on the run's own images (``--num-images``, seed 0) and is tested on
  ``--test-images`` (as many by default) drawn with seed 1, which neither the pretraining nor the
  probe has seen;
- ``--data DIR``: an ImageFolder layout (one directory of images per class); a seeded
  ``--holdout`` fraction of each class is the test split (each class keeps at least one training
  image).

Beside top-1, the first line gives the test split's majority-class share: what always answering the
most frequent class would score.

The random encoders (``--random-inits``, default 3) start as pretraining starts (the MAE's
initialisation, one seed each); their spread says how large a gap the data can show by chance.
"""

import time

import numpy as np
import torch

import fastmae
import fastmae.data as fd
from fastmae.cli import bands
from fastmae.cli.argtypes import nonnegative_int, positive_int, ratio, seed
from fastmae.cli.run_state import inspect_checkpoint, load_checkpoint
from fastmae.cli.console import Console, count
from fastmae.cli.errors import UsageError
from fastmae.cli.images import EVAL_CROP, eval_transform
from fastmae.cli.runtime import parse_device
from fastmae.linprobe import linear_probe
from fastmae.checkpoint_files import checkpoint_args
from fastmae.vit import VisionTransformer

def add_arguments(parser):
    parser.add_argument("--checkpoint", required=True,
                        help="a fastmae or official MAE checkpoint: a full MAE, encoder-only, or a "
                        "fine-tuned ViT (its head is not used); or a Hugging Face ViTMAE directory")
    parser.add_argument("--data", help="an ImageFolder directory (one sub-directory of images per "
                        "class); default: the embedded procedural set with its 6 labels")
    parser.add_argument("--num-images", type=positive_int, default=2048,
                        help="procedural set: the training images (those of the default pretraining "
                        "run)")
    parser.add_argument("--test-images", type=positive_int,
                        help="procedural set: the new images of the test split (default: as many as --num-images)")
    parser.add_argument("--holdout", type=ratio, default=0.2,
                        help="--data: the fraction of each class held out for testing")
    parser.add_argument("--epochs", type=positive_int, default=90, help="probe epochs (official: 90)")
    parser.add_argument("--warmup-epochs", type=nonnegative_int,
                        help="linear lr warmup epochs; default 10 (official), at most --epochs - 1")
    parser.add_argument("--batch-size", type=positive_int, default=256,
                        help="probe batch (capped at the training split; official: 16384)")
    parser.add_argument("--random-inits", type=nonnegative_int, default=3,
                        help="randomly initialised encoders of the same shape to probe as the baseline")
    parser.add_argument("--seed", type=seed, default=0,
                        help="the --data split, the heads' init and batch order, and the random encoders")
    parser.add_argument("--num-heads", type=positive_int,
                        help="attention heads, for a checkpoint whose shapes fit no fastmae factory "
                        "(the weights do not hold the number)")
    parser.add_argument("--device", help="where the encoders run: cpu, cuda or cuda:N (default: CUDA "
                        "when available); the heads train on the CPU")


def run(args):
    """Probe the checkpoint and the random encoders; print one line each. Returns the exit code."""
    warmup = min(10, args.epochs - 1) if args.warmup_epochs is None else args.warmup_epochs
    if warmup >= args.epochs:
        raise UsageError(f"--warmup-epochs {warmup} must be less than --epochs {args.epochs}")
    console = Console()
    device = parse_device(args.device)
    ckpt = load_checkpoint(args.checkpoint)
    encoder = _encoder(ckpt, args.checkpoint, args.num_heads)
    size = encoder.patch_embed.img_size[0]  # square: _encoder checks it
    norm = _normalisation(checkpoint_args(ckpt), encoder.in_chans, args.checkpoint)
    train, test, classes, source = _data(args, size, console.warn, norm)
    num_train = train[0].shape[0]
    batch = min(args.batch_size, num_train)
    features = "global-pool (fc_norm)" if encoder.global_pool else "cls"
    majority = 100 * torch.bincount(test[1]).max().item() / test[1].numel()
    console.say(f"probing {args.checkpoint} ({encoder.embed_dim}-d {features} features) on {source}: "
                f"{num_train} training and {test[0].shape[0]} test images, {len(classes)} classes "
                f"(majority class {majority:.1f}% of the test images); {args.epochs} epochs of LARS, "
                f"batch {batch}")

    def probe(model):
        t0 = time.perf_counter()
        result = linear_probe(model.to(device), *train, test=test, num_classes=len(classes),
                              epochs=args.epochs, warmup_epochs=warmup, batch_size=args.batch_size,
                              seed=args.seed)
        return result, time.perf_counter() - t0

    result, seconds = probe(encoder)
    console.say(f"pretrained encoder: top-1 {result.top1:.1f}% (train {result.train_top1:.1f}%) [{seconds:.1f}s]")
    if args.random_inits:
        random = [probe(_random_like(encoder, args.seed + 1 + k))[0].top1 for k in range(args.random_inits)]
        mean = sum(random) / len(random)
        spread = f" ({min(random):.1f}-{max(random):.1f}%)" if len(random) > 1 else ""
        console.say(f"random encoders ({count(len(random), 'init', 'inits')}): top-1 {mean:.1f}% mean{spread}")
        console.say(f"pretraining: {result.top1 - mean:+.1f} points of top-1 over random initialisation")
    return 0


def _encoder(ckpt, path, num_heads=None):
    """The checkpoint's encoder as a ``fastmae.VisionTransformer`` without a head, in eval mode: cls
    features, or pooled ``fc_norm`` ones for a ViT fine-tuned with global pooling."""
    info = inspect_checkpoint(ckpt)
    if info is None:
        raise UsageError(f"{path} holds no encoder in an official layout (cls_token, pos_embed, "
                         "patch_embed, blocks, norm)")
    if info.img_size is None:
        raise UsageError(f"{path}: its position table ({info.num_patches} patches) is not a square "
                         "grid; the probe needs square images")
    if info.factory is None and num_heads is None:
        raise UsageError(f"{path}: no fastmae factory has its shapes, and the weights do not hold the "
                         "number of attention heads; pass --num-heads")
    overrides = {"global_pool": bool(info.kind == "vit" and info.global_pool)}
    if num_heads is not None:
        overrides["num_heads"] = num_heads
    try:
        return VisionTransformer.from_checkpoint(ckpt["model"], num_classes=0, **overrides).eval()
    except (ValueError, AssertionError, RuntimeError) as e:  # e.g. --num-heads not dividing the width
        raise UsageError(f"cannot probe {path}: {str(e).splitlines()[0]}") from None


def _random_like(encoder, seed_value):
    """A fresh encoder of ``encoder``'s shape, initialised as MAE pretraining initialises it
    (``MaskedAutoencoderViT``'s own init, drawn from ``seed_value``), the global RNG untouched."""
    attn = encoder.blocks[0].attn
    config = dict(img_size=encoder.patch_embed.img_size[0], patch_size=encoder.patch_embed.patch_size,
                  in_chans=encoder.in_chans, embed_dim=encoder.embed_dim, depth=len(encoder.blocks),
                  num_heads=attn.num_heads, mlp_ratio=encoder.blocks[0].mlp.fc1.out_features / encoder.embed_dim,
                  decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=1)  # the decoder is dropped
    with torch.random.fork_rng(devices=[]):  # the ViT's own init draws too, then is overwritten
        torch.manual_seed(seed_value)
        mae = fastmae.MaskedAutoencoderViT(**config)
        return VisionTransformer.from_checkpoint(mae.state_dict(), num_classes=0, num_heads=attn.num_heads,
                                                 global_pool=encoder.global_pool).eval()


def _normalisation(stored, channels, path):
    """``(channels, mean, std)`` the encoder was pretrained with: the checkpoint's stored statistics
    (``fastmae pretrain`` keeps them), else ImageNet's for RGB."""
    mean, std = stored.get("mean"), stored.get("std")
    if mean is not None and std is not None and len(mean) == channels:
        return channels, list(mean), list(std)
    if channels != 3:
        raise UsageError(f"{path} takes {channels}-channel images but stores no per-channel mean/std to "
                         "normalise them with")
    return channels, None, None


def _data(args, size, warn, norm=(3, None, None)):
    """``(train, test, classes, description)``: train and test as ``(images [N, C, S, S], labels [N])``."""
    passed = getattr(args, "passed", frozenset())  # the options given on the command line
    channels = norm[0]
    if args.data is None and channels != 3:
        raise UsageError(f"{args.checkpoint} takes {channels}-channel images; the procedural set is RGB: "
                         "pass --data")
    if args.data is None:
        if "holdout" in passed:
            raise UsageError("--holdout applies to --data only: the procedural set's test images are new ones")
        if args.num_images < 2:
            raise UsageError(f"--num-images {args.num_images}: the probe needs at least 2 training images")
        make = lambda n, s: fd.ProceduralImages(n, size=2 * size, seed=s)  # noqa: E731 - as the default run
        test_images = getattr(args, "test_images", None) or args.num_images
        fit, held = make(args.num_images, 0), make(test_images, 1)
        return (_tensors(fit, range(len(fit)), size, "training", warn),
                _tensors(held, range(len(held)), size, "test", warn),
                fit.classes, f"the procedural set ({2 * size} px)")
    for name in ("num_images", "test_images"):
        if name in passed:
            raise UsageError(f"--{name.replace('_', '-')} applies to the procedural set only, not to --data")
    try:
        folder = fd.ImageFolder(args.data, warn=warn, channels=1 if channels == 1 else None)
    except fd.DataError as e:
        raise UsageError(str(e)) from None
    if folder.signature.channels != channels:
        raise UsageError(f"--data {args.data} has {folder.signature}; {args.checkpoint} takes {channels} channel(s)")
    unlabelled = sum(folder.label(i) < 0 for i in range(len(folder)))
    if unlabelled:
        raise UsageError(f"--data {args.data}: {count(unlabelled, 'image')} outside a class sub-directory; "
                         "the probe needs one sub-directory of images per class")
    if folder.num_classes < 2:
        raise UsageError(f"--data {args.data}: the probe needs at least 2 classes (sub-directories), "
                         f"found {folder.num_classes}")
    fit, held = _stratified_split([folder.label(i) for i in range(len(folder))], args.holdout, args.seed)
    if not held:
        raise UsageError(f"--data {args.data}: --holdout {args.holdout:g} of each class leaves no test image "
                         "(each class keeps at least one for training); raise --holdout or add images")
    train = _tensors(folder, fit, size, "training", warn, norm)
    if train[0].shape[0] < 2:
        raise UsageError(f"--data {args.data}: fewer than 2 training images decode")
    return train, _tensors(folder, held, size, "test", warn, norm), folder.classes, args.data


def eval_transform_array(image, size, mean, std):
    """:func:`eval_transform` for any image (``[H, W, C]`` array or PIL): the centre crop of the shorter
    side's ``0.875``, resized to ``size`` (antialiased bicubic, ``resized_crop``), normalised by ``mean``/``std``."""
    arr = np.ascontiguousarray(bands.image_array(image))
    h, w, _ = arr.shape
    side = max(1, min(h, w, round(min(h, w) * EVAL_CROP)))
    top, left = (h - side) // 2, (w - side) // 2
    out = fastmae.ops.resized_crop(torch.from_numpy(arr.reshape(-1).copy()), torch.tensor([[0, h, w]]),
                                   torch.tensor([[top, left, side, side]]), torch.zeros(1, dtype=torch.bool),
                                   size, mean, std, backend="torch")
    return out[0]


def _stratified_split(labels, holdout, seed_value):
    """``(train, test)`` indices: ``round(holdout * n)`` of each class's ``n`` images at random (seeded)
    for the test split, at most ``n - 1``, so every class is in the training split."""
    gen = torch.Generator().manual_seed(seed_value)
    train, test = [], []
    for c in sorted(set(labels)):
        members = [i for i, label in enumerate(labels) if label == c]
        members = [members[j] for j in torch.randperm(len(members), generator=gen, device="cpu").tolist()]
        n_test = min(round(len(members) * holdout), len(members) - 1)
        test += members[:n_test]
        train += members[n_test:]
    return sorted(train), sorted(test)


def _tensors(source, indices, size, split, warn, norm=(3, None, None)):
    """The images ``indices`` of ``source`` through :func:`eval_transform` (RGB photographs) or
    :func:`eval_transform_array` (others, with the pretraining statistics), and their labels; images
    that do not decode are left out with one warning."""
    images, labels, bad = [], [], 0
    _, mean, std = norm
    for i in indices:
        try:
            image = source.image(i)
            if mean is None and not isinstance(image, np.ndarray):
                images.append(eval_transform(image, size))
            else:
                images.append(eval_transform_array(image, size, mean, std))
        except fd.DataError:
            bad += 1
            continue
        labels.append(source.label(i))
    if bad:
        warn(f"left out {count(bad, 'image')} of the {split} split that could not be decoded")
    if not images:
        raise UsageError(f"no image of the {split} split could be decoded")
    return torch.stack(images), torch.tensor(labels)
