"""One MAE training step (forward, backward, AdamW step) four ways, the fused ops' share of it, and the
loop as ``fastmae pretrain`` runs it with its switches flipped one at a time.

``benchmarks/NOTES.md`` ("End to end", "MFU", "Fused-op share") gives the arms and the conditions.
"""

import gc
import statistics

import torch

import fastmae
import fastmae.data as fd
from fastmae.cli import config, engine, parse_args, pretrain
from fastmae.cli.console import Console
from fastmae.cli.distributed import DistInfo

from .cases import STEP, MAEShape, make_inputs, op_call, shape_for
from .harness import BenchEnv, measure, peak_bf16_tflops, time_calls

ARMS = ("reference-eager", "fastmae-eager", "reference-compiled", "fastmae-compiled")
MASK_RATIO = 0.75
NORM_PIX_LOSS = True
RESULTS: dict = {}  # (model, arm) -> result, filled as the arms run (the fast / reference ratios read it)


def e2e_params(scope: str) -> list[tuple[str, int, str, float]]:
    """``(model, batch, arm, estimated seconds)`` in run order, ViT-B/16 and the eager arms first;
    ``--bench-budget`` skips an arm whose estimate would not fit."""
    if scope == "cpu":
        return [("mae_vit_tiny_patch4", 16, arm, 5 if arm.endswith("eager") else 45) for arm in ARMS]
    cost = {"mae_vit_base_patch16": (10, 70), "mae_vit_large_patch16": (15, 100)}
    return [(m, 256, arm, cost[m][arm.endswith("compiled")]) for m in cost for arm in ARMS]


def train_flops_per_image(sh: MAEShape) -> int:
    """Training-step FLOPs per image: matrix multiplies only, a multiply-add = 2, what MAE needs (encoder on
    ``K+1`` tokens, decoder on ``L+1``), for every arm alike; ``train = 3 · forward``."""
    def blocks(tokens, width, depth):  # qkv + proj + fc1 + fc2, then QKᵀ and AV
        return depth * (2 * tokens * width * width * (4 + 2 * sh.mlp_ratio) + 4 * tokens * tokens * width)

    k, d, dd, pd = sh.len_keep, sh.embed_dim, sh.decoder_dim, sh.patch_dim
    forward = (2 * k * pd * d + blocks(k + 1, d, sh.depth) + 2 * (k + 1) * d * dd  # patch embed, encoder, embed
               + blocks(sh.num_patches + 1, dd, sh.decoder_depth) + 2 * sh.num_masked * dd * pd)  # decoder, pred
    return int(3 * forward)


def _release(env: BenchEnv, compiled: bool) -> int:
    """Free what nothing refers to (compiled graphs too); the bytes still allocated (0 on CPU)."""
    if compiled:
        torch._dynamo.reset()  # the compiled graphs hold on to the weights
    gc.collect()
    if not env.is_cuda:
        return 0
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated(env.device)


def build_step(model: str, arm: str, batch: int, env: BenchEnv, warmup: int):
    """``(step, batch)``: ``step()`` is one training step (forward under bf16 autocast on CUDA, backward,
    AdamW step) of a new model on one batch of float32 images, run ``warmup`` times (compilation
    included); the batch halved on out-of-memory until a step fits."""
    full_pred = arm.startswith("reference")  # official: every patch
    while True:
        try:
            torch.manual_seed(0)
            net = fastmae.create_model(model, backend="reference" if full_pred else env.fastmae_backend,
                                       norm_pix_loss=NORM_PIX_LOSS).to(env.device)
            opt = torch.optim.AdamW(net.parameters(), lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05,
                                    **({"fused": True} if env.is_cuda else {}))
            forward = torch.compile(net) if arm.endswith("compiled") else net
            imgs = torch.randn(batch, net.in_chans, *net.img_size, device=env.device)  # [N, C, H, W]

            def step() -> None:
                with torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=env.is_cuda):
                    loss, _, _ = forward(imgs, MASK_RATIO, full_pred=full_pred)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            for _ in range(warmup):
                step()
            env.sync()
            return step, batch
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
        # outside the except block: its traceback no longer pins the failed step's tensors
        net = opt = forward = imgs = step = None
        _release(env, arm.endswith("compiled"))
        batch //= 2


def fused_ops_seconds(env: BenchEnv, sh: MAEShape, arm: str) -> float | None:
    """Median seconds of the step's fused ops alone (``cases.STEP``; NOTES.md, "Fused-op share"); None for
    the compiled reference, which fuses that code into its neighbours."""
    if arm == "reference-compiled":
        return None
    official = arm.startswith("reference")
    amp = torch.bfloat16 if env.is_cuda else torch.float32
    calls = []
    for piece in STEP:
        if official and piece.official is None:
            continue
        op, variant = (piece.official, piece.official_variant) if official else (piece.op, piece.variant)
        inputs, grad_of = make_inputs(op, variant, sh, device=env.device, reference=official, **piece.dtypes(amp))
        calls.append((op_call(op, None if official else env.fastmae_backend), inputs, grad_of))

    def run():
        for fn, inputs, grad_of in calls:
            out = fn(**inputs)
            if grad_of:
                torch.autograd.grad(out, [inputs[k] for k in grad_of], torch.ones_like(out))

    return statistics.median(time_calls(env, run, rounds=10 if env.is_cuda else 5, warmup=2, flush=True))


def run_train_step(benchmark, env: BenchEnv, model: str, arm: str, batch: int) -> dict:
    """Time 10 steps after 3 warm-up steps: images/s, MFU, peak memory (``max_memory_allocated`` over the
    timed steps minus what was allocated before the model was built), fused-op share."""
    compiled = arm.endswith("compiled")
    baseline = _release(env, False)
    step, fitted = build_step(model, arm, batch, env, warmup=3)
    sh = shape_for(model, fitted, MASK_RATIO)
    if env.is_cuda:
        torch.cuda.reset_peak_memory_stats(env.device)
    timing = measure(benchmark, env, step, rounds=10, warmup=0, flush=False, queue_ahead=False)
    peak = torch.cuda.max_memory_allocated(env.device) - baseline if env.is_cuda else None
    del step
    _release(env, compiled)

    step_s = timing["median_ms"] / 1e3
    flops, images_per_s = train_flops_per_image(sh), sh.batch / step_s
    achieved = flops * images_per_s / 1e12
    spec = peak_bf16_tflops(env.info["device"]) if env.is_cuda else None
    fused = fused_ops_seconds(env, sh, arm)
    info = {
        "model": model, "arm": arm, "backend": "reference" if arm.startswith("reference") else env.fastmae_backend,
        "compiled": compiled, "batch": sh.batch, "batch_requested": batch,
        "amp": "bf16 autocast" if env.is_cuda else "none (float32)", "mask_ratio": MASK_RATIO,
        "norm_pix_loss": NORM_PIX_LOSS, "attention": "F.scaled_dot_product_attention",
        "optimizer": "AdamW" + (" (fused)" if env.is_cuda else ""), "shape": sh.as_dict(), **timing,
        "step_ms": timing["median_ms"], "images_per_s": images_per_s, "train_flops_per_image": flops,
        "achieved_tflops": achieved, "peak_bf16_tflops_spec": spec, "mfu": None if spec is None else achieved / spec,
        "pct_of_measured_gemm": 100 * achieved / env.info["gemm_tflops"] if env.is_cuda else None,
        "peak_mem_gb": None if peak is None else peak / 1e9,
        "fused_ops_ms": None if fused is None else fused * 1e3,
        "fused_ops_share": None if fused is None else fused / step_s, **env.info,
    }
    ref = RESULTS.get((model, arm.replace("fastmae", "reference")))
    if arm.startswith("fastmae") and ref is not None:
        info["speedup_vs_reference"] = images_per_s / ref["images_per_s"]
        if peak is not None and ref["peak_mem_gb"]:
            info["peak_mem_vs_reference"] = info["peak_mem_gb"] / ref["peak_mem_gb"]
    RESULTS[(model, arm)] = info
    benchmark.group = f"train step {model}"
    benchmark.extra_info.update(info)
    return info


def loop_arms(is_cuda: bool) -> dict[str, dict]:
    """``arm name -> switches`` of the loop as ``fastmae pretrain`` runs it (whole epochs of
    ``train_one_epoch`` on procedural images): ``loop``, this device's defaults, then each switch
    flipped alone. On the CPU: the tiny model, not a speed claim."""
    base = {"sync_per_step": False, "overlap_copy": True, "compiled": is_cuda,
            "optimizer": "fused" if is_cuda else "foreach"}
    flips = {"sync-per-step": {"sync_per_step": True}, "copy-on-compute-stream": {"overlap_copy": False},
             "eager" if is_cuda else "compiled": {"compiled": not is_cuda},
             "foreach-adamw" if is_cuda else "fused-adamw": {"optimizer": "foreach" if is_cuda else "fused"}}
    return {"loop": base, **{f"loop-{name}": {**base, **flip} for name, flip in flips.items()}}


def loop_params(scope: str) -> list[tuple[str, int, int, int]]:
    """``(model, input size, batch, iterations per epoch)``: ViT-B/16 as the headline on CUDA."""
    return [("mae_vit_tiny_patch4", 32, 16, 8)] if scope == "cpu" else [("mae_vit_base_patch16", 224, 256, 20)]


def _read_loss(module, args, out) -> None:
    """A forward hook: the host reads the loss (``.item()``) after every call, outside ``torch.compile``."""
    out[0].detach().item()


class LoopRun:
    """A model, optimizer and loader set up as ``fastmae pretrain`` sets them up, with ``switches``;
    ``epoch()`` trains one epoch through ``train_one_epoch``."""

    def __init__(self, env: BenchEnv, model: str, size: int, batch: int, iters: int, switches: dict, out_dir: str):
        torch.manual_seed(0)
        args = parse_args(["pretrain", "--model", model, "--input-size", str(size), "--batch-size", str(batch),
                           "--num-images", str(batch * iters), "--print-freq", str(iters), "--norm-pix-loss",
                           "--backend", env.fastmae_backend, "--device", str(env.device), "--output-dir", out_dir,
                           "--compile" if switches["compiled"] else "--no-compile"])
        self.run = config.resolve(args, DistInfo(), env.device, {})
        model_ = pretrain._build_model(self.run).to(env.device)
        self.optimizer = pretrain.make_optimizer(model_, self.run, switches["optimizer"])
        self.model = torch.compile(model_) if switches["compiled"] else model_
        if switches["sync_per_step"]:
            self.model.register_forward_hook(_read_loss)
        self.scaler = torch.amp.GradScaler(env.device.type) if self.run.amp == "fp16" else None
        self.loader = fd.build_loader(fd.ProceduralImages(batch * iters, size=size), batch, size, seed=0,
                                      num_workers=self.run.num_workers, pin_memory=env.is_cuda)
        self.switches, self.epochs, self.console, self.last = switches, 0, Console(False), {}

    def epoch(self) -> None:
        self.loader.set_epoch(self.epochs)
        self.last = engine.train_one_epoch(self.model, self.loader, self.optimizer, self.scaler, self.run,
                                           self.epochs, self.console, overlap_copy=self.switches["overlap_copy"])
        self.epochs += 1


def run_loop_arm(benchmark, env: BenchEnv, model: str, size: int, batch: int, iters: int, arm: str,
                 out_dir: str) -> dict:
    """Time 3 epochs of ``iters`` iterations after one (compilation, worker start-up) untimed."""
    arms = loop_arms(env.is_cuda)
    switches = arms[arm]
    loop = LoopRun(env, model, size, batch, iters, switches, out_dir)
    timing = measure(benchmark, env, loop.epoch, rounds=3, warmup=1, flush=False, queue_ahead=False)
    step_ms = timing["median_ms"] / iters
    info = {
        "model": model, "arm": arm, "batch": batch, "input_size": size, "iterations_per_epoch": iters,
        "step_ms": step_ms, "images_per_s": batch / step_ms * 1e3, "data_wait_s": loop.last["data_wait"],
        "loop_arm": arm, "loop_sync_per_step": switches["sync_per_step"],
        "loop_copy": "side stream" if switches["overlap_copy"] and env.is_cuda else "compute stream",
        "loop_compiled": switches["compiled"], "loop_optimizer": f"AdamW {switches['optimizer']}",
        "loop_switched": [k for k, v in switches.items() if v != arms["loop"][k]],
        "amp": loop.run.amp, "backend": env.fastmae_backend, "num_workers": loop.run.num_workers,
        "speed_claim": env.is_cuda, "note": None if env.is_cuda else "CPU, tiny model: not a speed claim",
        **timing, **env.info,
    }
    del loop
    _release(env, switches["compiled"])
    benchmark.group = f"train loop {model}"
    benchmark.extra_info.update(info)
    return info
