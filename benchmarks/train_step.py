"""One MAE training step (forward, backward, AdamW step), four ways, and the fused ops' share of it.

Arms, all with the same attention (``F.scaled_dot_product_attention``, in every path):
    reference-eager      ``backend="reference"``: the official algorithm, eager
    reference-compiled   the same under ``torch.compile(model)`` (inductor)
    fastmae-eager        the fast path (``backend="triton"`` on CUDA, ``"torch"`` on CPU), ``full_pred=False``
    fastmae-compiled     the same under ``torch.compile(model)``

CUDA: bf16 autocast, fused AdamW, ``norm_pix_loss=True`` (the official pretraining recipe), mask 0.75,
batch 256 halved until a step fits. CPU: float32 (no autocast: CPU bf16 speed depends on the chip),
a small model; the figure that matters there is the fast/reference ratio, not the speed.

The fused ops' share: the fused ops (or, for the reference arm, the reference code they replace) run
alone at the step's shapes and dtypes — forward and backward, L2 flushed first, GPU time with the
host queued ahead (as in a step, where the GPU lags the host) — and their time is divided by the
step time. The compiled reference fuses those ops into their neighbours, so it has no
separable share (``None``); the compiled fast path calls the same custom kernels as its eager arm.
"""

from __future__ import annotations

import gc
import statistics

import torch

import fastmae
from fastmae import ops, reference

from . import bytes_model as bm
from .flops import peak_bf16_tflops, train_flops_per_image
from .harness import BenchEnv, time_calls, measure

ARMS = ("reference-eager", "fastmae-eager", "reference-compiled", "fastmae-compiled")
FACTORY = {
    "vit_b16": "mae_vit_base_patch16",
    "vit_l16": "mae_vit_large_patch16",
    "vit_h14": "mae_vit_huge_patch14",
    "tiny": "mae_vit_tiny_patch4",
    "micro": "mae_vit_micro_patch4",
}
MASK_RATIO = 0.75
NORM_PIX_LOSS = True

# (model, arm) -> result dict, filled as the arms run; read by the terminal summary
RESULTS: dict = {}


def e2e_params(scope: str) -> list[tuple[str, int, str, float]]:
    """``(model, batch, arm, estimated seconds)`` in run order.

    ViT-B/16 first (the issue's end-to-end targets are ViT-B/16), then ViT-L/16; within a model the
    eager arms first. The estimates (model build, compilation, 13 steps, the fused-op timing) let
    ``--bench-budget`` skip an arm that would not finish in time rather than overrun.
    """
    if scope == "cpu":
        # tiny ViT (D=128, 4 blocks; decoder 96 wide, 2 blocks), 32 px, batch 16: small enough for CI
        return [("tiny", 16, arm, 5 if arm.endswith("eager") else 45) for arm in ARMS]
    cost = {("vit_b16", False): 10, ("vit_b16", True): 70, ("vit_l16", False): 15, ("vit_l16", True): 100}
    return [(m, 256, arm, cost[m, arm.endswith("compiled")]) for m in ("vit_b16", "vit_l16") for arm in ARMS]


def _backend(arm: str, env: BenchEnv) -> str:
    return "reference" if arm.startswith("reference") else env.fastmae_backend


class Trainer:
    """A model, its optimizer and one batch: ``step()`` is one training step."""

    def __init__(self, model_key: str, arm: str, batch: int, env: BenchEnv):
        torch.manual_seed(0)
        self.env, self.arm, self.batch = env, arm, batch
        self.model = fastmae.create_model(FACTORY[model_key], backend=_backend(arm, env),
                                          norm_pix_loss=NORM_PIX_LOSS).to(env.device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05,
                                     **({"fused": True} if env.is_cuda else {}))
        self.forward = torch.compile(self.model) if arm.endswith("compiled") else self.model
        size = self.model.img_size
        self.imgs = torch.randn(batch, self.model.in_chans, *size, device=env.device)  # [N, C, H, W] float32
        self.full_pred = arm.startswith("reference")  # the reference always predicts every patch
        self.amp = env.is_cuda

    def step(self) -> None:
        with torch.autocast(self.env.device.type, dtype=torch.bfloat16, enabled=self.amp):
            loss, _, _ = self.forward(self.imgs, MASK_RATIO, full_pred=self.full_pred)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def build_trainer(model_key: str, arm: str, batch: int, env: BenchEnv, warmup: int) -> Trainer:
    """A trainer that has run ``warmup`` steps (compilation included), halving the batch on OOM."""
    while True:
        trainer = None
        try:
            trainer = Trainer(model_key, arm, batch, env)
            for _ in range(warmup):
                trainer.step()
            env.sync()
            return trainer
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
        # outside the except block: its traceback no longer pins the failed step's tensors
        trainer = None
        if arm.endswith("compiled"):
            torch._dynamo.reset()
        gc.collect()
        torch.cuda.empty_cache()
        batch //= 2


# --------------------------------------------------------------------------------------------------
# the fused ops alone, at the step's shapes
# --------------------------------------------------------------------------------------------------


def fused_ops_seconds(env: BenchEnv, sh: bm.MAEShape, arm: str) -> float | None:
    """Median seconds of the fused ops' forward + backward at the step's shapes (see the module docstring)."""
    if arm == "reference-compiled":
        return None
    dev = env.device
    act = torch.bfloat16 if env.is_cuda else torch.float32  # activations under autocast
    n, num, k, m, pd, d, dd, p = (sh.batch, sh.num_patches, sh.len_keep, sh.num_masked, sh.patch_dim,
                                  sh.embed_dim, sh.decoder_dim, sh.patch_size)
    imgs = torch.randn(n, sh.in_chans, sh.img_size, sh.img_size, device=dev)  # float32 images
    pos = torch.randn(1, num + 1, d, device=dev)  # fixed float32 tables, as the model's
    dec_pos = torch.randn(1, num + 1, dd, device=dev)
    cls = torch.randn(1, 1, d, device=dev, requires_grad=True)
    mask_token = torch.randn(1, 1, dd, device=dev, requires_grad=True)
    x_dec = torch.randn(n, k + 1, dd, device=dev, dtype=act, requires_grad=True)  # decoder_embed output
    backend = _backend(arm, env)

    if backend == "reference":
        x_emb = torch.randn(n, num, d, device=dev, dtype=act, requires_grad=True)  # conv on all patches
        pred = torch.randn(n, num, pd, device=dev, dtype=act, requires_grad=True)

        def run():
            noise = torch.rand(n, num, device=dev)
            ids_keep, ids_restore, mask, _ = reference.masking_ids_ref(noise, k)
            tokens = reference.encoder_input_official_ref(x_emb, pos, cls, ids_keep)
            dec = reference.decoder_input_ref(x_dec, ids_restore, mask_token, dec_pos)
            loss = reference.masked_mse_loss_ref(pred, imgs, mask, p, NORM_PIX_LOSS)
            torch.autograd.grad([tokens, dec, loss], [x_emb, cls, x_dec, mask_token, pred],
                                [torch.ones_like(tokens), torch.ones_like(dec), torch.ones_like(loss)])
    else:
        x_vis = torch.randn(n, k, d, device=dev, dtype=act, requires_grad=True)  # patch-embed GEMM output
        pred = torch.randn(n, m, pd, device=dev, dtype=act, requires_grad=True)

        def run():
            noise = torch.rand(n, num, device=dev)
            ids_keep, ids_restore, _, ids_masked = ops.masking_ids(noise, k, backend=backend)
            ops.patchify_gather(imgs, ids_keep, p, backend=backend)
            tokens = ops.encoder_input(x_vis, pos, cls, ids_keep, backend=backend)
            dec = ops.decoder_input(x_dec, ids_restore, mask_token, dec_pos, backend=backend)
            loss = ops.masked_mse_loss(pred, imgs, None, p, NORM_PIX_LOSS, ids_masked=ids_masked,
                                       backend=backend)
            torch.autograd.grad([tokens, dec, loss], [x_vis, cls, x_dec, mask_token, pred],
                                [torch.ones_like(tokens), torch.ones_like(dec), torch.ones_like(loss)])

    times = time_calls(env, run, rounds=10 if env.is_cuda else 5, warmup=2, flush=True)
    return statistics.median(times)


# --------------------------------------------------------------------------------------------------
# the benchmark body
# --------------------------------------------------------------------------------------------------


def _allocated(env: BenchEnv) -> int:
    """Bytes allocated on the device now, after freeing what nothing refers to (0 on CPU)."""
    gc.collect()
    if not env.is_cuda:
        return 0
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated(env.device)


def run_train_step(benchmark, env: BenchEnv, model_key: str, arm: str, batch: int) -> dict:
    warmup = 3
    # Peak memory is relative to what is allocated before the trainer exists (the session's L2-flush
    # buffer, anything a previous arm left): the same for every arm, it counts the weights, the
    # optimizer state, the batch and the step's activations; the peak is over the timed steps.
    baseline = _allocated(env)
    trainer = build_trainer(model_key, arm, batch, env, warmup)
    sh = bm.shape_for(model_key, trainer.batch, MASK_RATIO)
    if env.is_cuda:
        torch.cuda.reset_peak_memory_stats(env.device)
    rounds = 10
    timing = measure(benchmark, env, trainer.step, rounds=rounds, warmup=0, flush=False, queue_ahead=False)
    peak = torch.cuda.max_memory_allocated(env.device) - baseline if env.is_cuda else None
    del trainer
    if arm.endswith("compiled"):
        torch._dynamo.reset()  # drop the compiled graphs (and the weights they hold on to)
    gc.collect()
    if env.is_cuda:
        torch.cuda.empty_cache()

    flops = train_flops_per_image(sh)
    images_per_s = sh.batch / timing.median_s
    achieved = flops["train"] * images_per_s / 1e12
    spec = peak_bf16_tflops(env.device_name) if env.is_cuda else None
    fused = fused_ops_seconds(env, sh, arm)
    info = {
        "model": model_key, "factory": FACTORY[model_key], "arm": arm, "backend": _backend(arm, env),
        "compiled": arm.endswith("compiled"), "batch": sh.batch, "batch_requested": batch,
        "amp": "bf16 autocast" if env.is_cuda else "none (float32)", "mask_ratio": MASK_RATIO,
        "norm_pix_loss": NORM_PIX_LOSS, "attention": "F.scaled_dot_product_attention",
        "optimizer": "AdamW" + (" (fused)" if env.is_cuda else ""), "shape": sh.as_dict(),
        **timing.as_dict(), "step_ms": timing.median_s * 1e3, "images_per_s": images_per_s,
        "train_flops_per_image": flops["train"], "achieved_tflops": achieved,
        "peak_bf16_tflops_spec": spec, "mfu": None if spec is None else achieved / spec,
        "pct_of_measured_gemm": None if not env.gemm_tflops else 100 * achieved / env.gemm_tflops,
        "peak_mem_gb": None if peak is None else peak / 1e9,
        "fused_ops_ms": None if fused is None else fused * 1e3,
        "fused_ops_share": None if fused is None else fused / timing.median_s,
        **env.describe(),
    }
    RESULTS[(model_key, arm)] = info
    ref = RESULTS.get((model_key, arm.replace("fastmae", "reference")))
    if arm.startswith("fastmae") and ref is not None:
        info["speedup_vs_reference"] = images_per_s / ref["images_per_s"]
        if peak is not None and ref.get("peak_mem_gb"):
            info["peak_mem_vs_reference"] = info["peak_mem_gb"] / ref["peak_mem_gb"]
    benchmark.group = f"train step {model_key}"
    benchmark.extra_info.update(info)
    return info


def summary_lines() -> list[str]:
    """A markdown table of the end-to-end results of this session."""
    if not RESULTS:
        return []
    lines = ["| model | arm | batch | images/s | step ms | MFU | peak GB | fused-op share | fast / ref |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (model, arm), r in RESULTS.items():
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        mem = "-" if r["peak_mem_gb"] is None else f"{r['peak_mem_gb']:.1f}"
        share = "-" if r["fused_ops_share"] is None else f"{100 * r['fused_ops_share']:.1f}%"
        ratio = f"{r['speedup_vs_reference']:.2f}x" if "speedup_vs_reference" in r else "-"
        lines.append(f"| {model} | {arm} | {r['batch']} | {r['images_per_s']:.1f} | {r['step_ms']:.1f} "
                     f"| {mfu} "
                     f"| {mem} | {share} | {ratio} |")
    first = next(iter(RESULTS.values()))
    lines.append(f"({first['device']}; torch {first['torch']}, triton {first['triton']}; {first['amp']}; "
                 f"mask {MASK_RATIO}, norm_pix_loss={NORM_PIX_LOSS})")
    return lines
