"""One MAE training step (forward, backward, AdamW step), four ways, and the fused ops' share of it.

Arms (SDPA attention in all): ``reference-eager`` (``backend="reference"``, the official algorithm,
full pred), ``reference-compiled`` (``torch.compile(model)``), ``fastmae-eager`` (the fast path,
``forward(full_pred=False)``; triton on CUDA, torch on CPU), ``fastmae-compiled``. CUDA: bf16
autocast, fused AdamW, ``norm_pix_loss=True``, mask 0.75, batch 256 halved until a step fits. CPU:
float32, ``mae_vit_tiny_patch4`` at batch 16: the fast / reference ratio matters there, not the speed.

Fused-op share: the step's fused ops (``cases.STEP``; for the reference arm the official code they
replace) alone at the step's shapes and dtypes, forward and backward where the step differentiates,
L2 flushed, host queued ahead; that time over the step time. The compiled reference fuses that code
into its neighbours: no separable share (``None``).

FLOPs per image (``train_flops_per_image``), matrix multiplies only, a multiply-add = 2::

    forward = 2·K·P·D                                  patch embed, visible patches only
            + depth · (2·T·D²·(4 + 2r) + 4·T²·D)      encoder blocks, T = K + 1, MLP ratio r
            + 2·T·D·Dd                                 decoder_embed
            + dec_depth · (2·S·Dd²·(4 + 2r) + 4·S²·Dd) decoder blocks, S = L + 1
            + 2·M·Dd·P                                 decoder_pred on the masked patches
    train   = 3 · forward                              backward = 2 × forward

(qkv 6TD², proj 2TD², MLP 4rTD², QKᵀ and AV 2·2·T²·D): what MAE needs, for every arm alike.
"""

import gc
import statistics

import torch

import fastmae

from .cases import STEP, MAEShape, make_inputs, op_call, shape_for
from .harness import BenchEnv, measure, peak_bf16_tflops, time_calls

ARMS = ("reference-eager", "fastmae-eager", "reference-compiled", "fastmae-compiled")
MASK_RATIO = 0.75
NORM_PIX_LOSS = True
RESULTS: dict = {}  # (model, arm) -> result, filled as the arms run


def e2e_params(scope: str) -> list[tuple[str, int, str, float]]:
    """``(model, batch, arm, estimated seconds)`` in run order (ViT-B/16, the headline, first; eager arms
    first); ``--bench-budget`` skips an arm whose estimate would not fit."""
    if scope == "cpu":
        return [("mae_vit_tiny_patch4", 16, arm, 5 if arm.endswith("eager") else 45) for arm in ARMS]
    cost = {"mae_vit_base_patch16": (10, 70), "mae_vit_large_patch16": (15, 100)}
    return [(m, 256, arm, cost[m][arm.endswith("compiled")]) for m in cost for arm in ARMS]


def _backend(arm: str, env: BenchEnv) -> str:
    """The model backend of an arm."""
    return "reference" if arm.startswith("reference") else env.fastmae_backend


def _blocks(tokens: int, width: int, depth: int, mlp_ratio: float) -> int:
    """Matmul FLOPs of ``depth`` transformer blocks on ``tokens`` rows of ``width``."""
    linear = 2 * tokens * width * width * (4 + 2 * mlp_ratio)  # qkv + proj + fc1 + fc2
    return int(depth * (linear + 4 * tokens * tokens * width))  # + QKᵀ and AV


def train_flops_per_image(sh: MAEShape) -> int:
    """Training-step FLOPs per image (the module docstring's formula)."""
    k, d, dd, pd = sh.len_keep, sh.embed_dim, sh.decoder_dim, sh.patch_dim
    forward = (2 * k * pd * d + _blocks(k + 1, d, sh.depth, sh.mlp_ratio) + 2 * (k + 1) * d * dd
               + _blocks(sh.num_patches + 1, dd, sh.decoder_depth, sh.mlp_ratio) + 2 * sh.num_masked * dd * pd)
    return 3 * forward


class Trainer:
    """A model, its optimizer and one batch of float32 images: ``step()`` is one training step."""

    def __init__(self, model: str, arm: str, batch: int, env: BenchEnv):
        torch.manual_seed(0)
        self.env, self.batch = env, batch
        self.model = fastmae.create_model(model, backend=_backend(arm, env), norm_pix_loss=NORM_PIX_LOSS).to(env.device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05,
                                     **({"fused": True} if env.is_cuda else {}))
        self.forward = torch.compile(self.model) if arm.endswith("compiled") else self.model
        self.imgs = torch.randn(batch, self.model.in_chans, *self.model.img_size, device=env.device)  # [N, C, H, W]
        self.full_pred = arm.startswith("reference")  # the official model predicts every patch

    def step(self) -> None:
        """Forward (autocast on CUDA), backward, optimizer step."""
        with torch.autocast(self.env.device.type, dtype=torch.bfloat16, enabled=self.env.is_cuda):
            loss, _, _ = self.forward(self.imgs, MASK_RATIO, full_pred=self.full_pred)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def _release(env: BenchEnv, compiled: bool) -> int:
    """Free what nothing refers to (compiled graphs too); the bytes still allocated (0 on CPU)."""
    if compiled:
        torch._dynamo.reset()  # the compiled graphs hold on to the weights
    gc.collect()
    if not env.is_cuda:
        return 0
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated(env.device)


def build_trainer(model: str, arm: str, batch: int, env: BenchEnv, warmup: int) -> Trainer:
    """A trainer that has run ``warmup`` steps (compilation included), halving the batch on OOM."""
    while True:
        try:
            trainer = Trainer(model, arm, batch, env)
            for _ in range(warmup):
                trainer.step()
            env.sync()
            return trainer
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
        trainer = None  # outside the except block: its traceback no longer pins the failed step's tensors
        _release(env, arm.endswith("compiled"))
        batch //= 2


def fused_ops_seconds(env: BenchEnv, sh: MAEShape, arm: str) -> float | None:
    """Median seconds of the step's fused ops (or their official code) alone, as the module docstring says."""
    if arm == "reference-compiled":
        return None
    official = arm.startswith("reference")
    amp = torch.bfloat16 if env.is_cuda else torch.float32  # activations under autocast
    calls = []
    for piece in STEP:
        if official and piece.official is None:
            continue
        op, variant = (piece.official, piece.official_variant) if official else (piece.op, piece.variant)
        inputs, grad_of = make_inputs(op, variant, sh, device=env.device, reference=official, **piece.dtypes(amp))
        calls.append((op_call(op, variant, sh, None if official else env.fastmae_backend), inputs, grad_of))

    def run():
        for fn, inputs, grad_of in calls:
            out = fn(**inputs)
            if grad_of:
                torch.autograd.grad(out, [inputs[k] for k in grad_of], torch.ones_like(out))

    return statistics.median(time_calls(env, run, rounds=10 if env.is_cuda else 5, warmup=2, flush=True))


def run_train_step(benchmark, env: BenchEnv, model: str, arm: str, batch: int) -> dict:
    """Time 10 steps after 3 warm-up steps; images/s, MFU, peak memory, fused-op share into ``extra_info``.

    Peak memory: ``max_memory_allocated`` over the timed steps minus what was allocated before the
    trainer was built (the same for every arm: weights, optimizer state, batch, activations).
    """
    compiled = arm.endswith("compiled")
    baseline = _release(env, False)
    trainer = build_trainer(model, arm, batch, env, warmup=3)
    sh = shape_for(model, trainer.batch, MASK_RATIO)
    if env.is_cuda:
        torch.cuda.reset_peak_memory_stats(env.device)
    timing = measure(benchmark, env, trainer.step, rounds=10, warmup=0, flush=False, queue_ahead=False)
    peak = torch.cuda.max_memory_allocated(env.device) - baseline if env.is_cuda else None
    del trainer
    _release(env, compiled)

    step_s = timing["median_ms"] / 1e3
    flops = train_flops_per_image(sh)
    images_per_s = sh.batch / step_s
    achieved = flops * images_per_s / 1e12
    spec = peak_bf16_tflops(env.info["device"]) if env.is_cuda else None
    fused = fused_ops_seconds(env, sh, arm)
    info = {
        "model": model, "arm": arm, "backend": _backend(arm, env), "compiled": compiled, "batch": sh.batch,
        "batch_requested": batch, "amp": "bf16 autocast" if env.is_cuda else "none (float32)",
        "mask_ratio": MASK_RATIO, "norm_pix_loss": NORM_PIX_LOSS, "attention": "F.scaled_dot_product_attention",
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
