"""What is benchmarked (per-op suite, bytes model, training step alike): shapes, inputs and calls of
every op, and the fused ops of a training step.

``shape_for``: the sizes of ``fastmae.create_model(name)`` built on the ``meta`` device, keyed by the
factory names of ``fastmae.MODELS`` (no size table here): ``N`` batch, ``C`` channels, ``H x W`` image,
``p`` patch, ``L = HW/p²``, ``P = p²C``, ``K = int(L(1 - mask_ratio))`` kept, ``M = L - K``, ``D`` /
``Dd`` widths. ``make_inputs``: an op's keyword inputs, from a real random masking. ``op_call``: the
official algorithm (``fastmae.reference``) or ``fastmae.ops`` on a backend, as ``fn(**inputs)``.
encoder_input's reference is the official encoder order (``encoder_input_official_ref``, on
``x [N, L, D]``), what the fast path replaces; ``drop_cls`` (``x[:, 1:]``, reference only) is what
``masked_tokens`` replaces.
"""

from dataclasses import dataclass
from functools import lru_cache, partial
from typing import NamedTuple

import torch

import fastmae
from fastmae import ops, reference


@dataclass(frozen=True)
class MAEShape:
    """One model's sizes at a batch size and mask ratio (build it with ``shape_for``)."""

    model: str  # a factory name of fastmae.MODELS
    batch: int  # N
    mask_ratio: float
    img_size: tuple[int, int]  # (H, W)
    patch_size: int  # p
    in_chans: int  # C
    embed_dim: int  # D
    decoder_dim: int  # Dd
    depth: int  # encoder blocks
    decoder_depth: int  # decoder blocks
    mlp_ratio: float
    grid: tuple[int, int]  # (H/p, W/p)
    num_patches: int  # L
    len_keep: int  # K
    num_masked: int  # M
    patch_dim: int  # P

    def as_dict(self) -> dict:
        """The symbols, as every result stores them."""
        return {"model": self.model, "N": self.batch, "C": self.in_chans, "H": self.img_size[0], "W": self.img_size[1],
                "p": self.patch_size, "L": self.num_patches, "K": self.len_keep, "M": self.num_masked,
                "P": self.patch_dim, "D": self.embed_dim, "Dd": self.decoder_dim, "mask_ratio": self.mask_ratio}


@lru_cache(maxsize=None)
def shape_for(model: str, batch: int, mask_ratio: float) -> MAEShape:
    """``MAEShape`` of the factory ``model`` (a key of ``fastmae.MODELS``) at ``batch`` and ``mask_ratio``:
    the sizes are read from ``fastmae.create_model(model)`` built on the ``meta`` device."""
    if model not in fastmae.MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {sorted(fastmae.MODELS)}")
    with torch.device("meta"):
        m = fastmae.create_model(model)
    d, p = m.pos_embed.shape[-1], m.patch_size
    grid = (m.img_size[0] // p, m.img_size[1] // p)
    num = grid[0] * grid[1]
    keep = int(num * (1 - mask_ratio))  # floor, as the official code
    return MAEShape(model, batch, mask_ratio, tuple(m.img_size), p, m.in_chans, d, m.decoder_pos_embed.shape[-1],
                    len(m.blocks), len(m.decoder_blocks), m.blocks[0].mlp.fc1.out_features / d, grid, num, keep,
                    num - keep, p * p * m.in_chans)


# Every (op, variant) of the per-op suite and the bytes table, in table order.
OP_VARIANTS = (
    *((op, {}) for op in ("patchify", "unpatchify", "patchify_gather", "encoder_input", "decoder_input",
                          "masked_tokens")),
    *(("masked_mse_loss", {"form": f, "norm_pix": n}) for f in ("full", "masked") for n in (False, True)),
    ("masking_ids", {}),
)


def variant_label(op: str, variant: dict) -> str:
    """``masked_mse_loss[masked,norm_pix]`` style names."""
    parts = [p for p in (variant.get("form"), "norm_pix" if variant.get("norm_pix") else None) if p]
    return f"{op}[{','.join(parts)}]" if parts else op


def make_inputs(op: str, variant: dict, sh: MAEShape, dtype: torch.dtype, device, *, reference: bool = False,
                table_dtype: torch.dtype | None = None, imgs_dtype: torch.dtype | None = None,
                requires_grad: bool = True) -> tuple[dict, tuple[str, ...]]:
    """``(inputs, grad_of)``: the op's keyword inputs and the names of those a model trains through.

    ``dtype`` is the activations' (tokens, pred, images); ``table_dtype`` the position tables' and
    learned tokens', ``imgs_dtype`` the loss's images' (both default to ``dtype``; in the model under
    bf16 autocast they are float32). ``reference`` gives the inputs of the op's reference call.
    """
    n, c, (hh, ww), num, k = sh.batch, sh.in_chans, sh.img_size, sh.num_patches, sh.len_keep
    d, dd, pd = sh.embed_dim, sh.decoder_dim, sh.patch_dim
    noise = torch.rand(n, num, device=device)  # a random masking, as the model draws it: small noise is kept
    shuffle = torch.argsort(noise, dim=1)  # [N, L]
    restore = torch.argsort(shuffle, dim=1)  # [N, L]
    ids = {"noise": noise, "ids_keep": shuffle[:, :k].contiguous(), "ids_masked": shuffle[:, k:].contiguous(),
           "ids_restore": restore, "mask": (restore >= k).float()}  # int64 ids; mask fp32, 1 = removed

    def data(*size, grad=False, dt=None):
        return torch.randn(*size, device=device, dtype=dt or dtype).requires_grad_(grad and requires_grad)

    table = partial(data, dt=table_dtype)
    if op == "patchify":
        inputs = {"imgs": data(n, c, hh, ww, grad=True)}
    elif op == "unpatchify":
        inputs = {"x": data(n, num, pd, grad=True)}
    elif op == "patchify_gather":
        inputs = {"imgs": data(n, c, hh, ww, grad=True), "ids_keep": ids["ids_keep"]}
    elif op == "encoder_input":
        x = {"x": data(n, num, d, grad=True)} if reference else {"x_vis": data(n, k, d, grad=True)}
        inputs = {**x, "pos_embed": table(1, num + 1, d), "cls_token": table(1, 1, d, grad=True),
                  "ids_keep": ids["ids_keep"]}
    elif op == "decoder_input":
        inputs = {"x": data(n, k + 1, dd, grad=True), "ids_restore": ids["ids_restore"],
                  "mask_token": table(1, 1, dd, grad=True), "pos_embed": table(1, num + 1, dd)}
    elif op == "masked_tokens":
        inputs = {"x": data(n, num + 1, dd, grad=True), "ids_masked": ids["ids_masked"],
                  "ids_restore": ids["ids_restore"]}
    elif op == "drop_cls":
        inputs = {"x": data(n, num + 1, dd, grad=True)}
    elif op == "masked_mse_loss":
        rows, weights = (num, "mask") if variant.get("form", "full") == "full" else (sh.num_masked, "ids_masked")
        inputs = {"pred": data(n, rows, pd, grad=True), "imgs": data(n, c, hh, ww, dt=imgs_dtype),
                  weights: ids[weights]}
    elif op == "masking_ids":
        inputs = {"noise": ids["noise"]}
    else:
        raise ValueError(f"unknown op {op!r}")
    return inputs, tuple(name for name, t in inputs.items() if t.requires_grad)


def op_call(op: str, variant: dict, sh: MAEShape, backend: str | None = None):
    """``fn(**inputs)``: the official algorithm (``backend=None``) or ``fastmae.ops.<op>`` on ``backend``."""
    if backend is None:
        if op == "drop_cls":
            return lambda x: x[:, 1:, :]  # the official decoder drops cls before decoder_norm
        fn = reference.encoder_input_official_ref if op == "encoder_input" else getattr(reference, f"{op}_ref")
        on = {}
    else:
        fn, on = getattr(ops, op), {"backend": backend}
    static = {
        "patchify": {"patch_size": sh.patch_size},
        "unpatchify": {"patch_size": sh.patch_size, "grid_size": sh.grid, "in_chans": sh.in_chans},
        "patchify_gather": {"patch_size": sh.patch_size},
        "masked_mse_loss": {"patch_size": sh.patch_size, "norm_pix_loss": bool(variant.get("norm_pix")),
                            **({"mask": None} if variant.get("form") == "masked" else {})},
        "masking_ids": {"len_keep": sh.len_keep},
    }.get(op, {})
    return partial(fn, **static, **on)


class StepPiece(NamedTuple):
    """A fused op of the fast path's training step (``forward(full_pred=False)``) and the official
    code it replaces (``official``: a reference op; ``None`` where no code is separable)."""

    piece: str
    op: str
    variant: dict
    backward: bool  # the step differentiates through it
    fp32_input: bool  # its data input is float32 under autocast (images, the residual stream)
    official: str | None
    official_variant: dict
    official_label: str

    def dtypes(self, amp_dtype: torch.dtype) -> dict:
        """``make_inputs`` keywords at the model's dtypes under ``amp_dtype`` autocast: tables, tokens
        and images float32, GEMM outputs ``amp_dtype``; gradients where the step takes them."""
        return {"dtype": torch.float32 if self.fp32_input else amp_dtype, "table_dtype": torch.float32,
                "imgs_dtype": torch.float32, "requires_grad": self.backward}


# In the order the fast path runs them: masking_ids -> patchify_gather -> (F.linear) -> encoder_input
# -> blocks -> (decoder_embed) -> decoder_input -> decoder blocks -> masked_tokens -> (decoder_norm,
# decoder_pred) -> masked_mse_loss.
STEP = (
    StepPiece("masking", "masking_ids", {}, False, True, "masking_ids", {}, "argsort x2, gather"),
    StepPiece("visible patches", "patchify_gather", {}, False, True, None, {}, "(inside the conv on all L)"),
    StepPiece("encoder input", "encoder_input", {}, True, False, "encoder_input", {}, "pos add on all L, gather, cat"),
    StepPiece("decoder input", "decoder_input", {}, True, False, "decoder_input", {}, "repeat, cat, gather, cat, add"),
    StepPiece("masked tokens", "masked_tokens", {}, True, True, "drop_cls", {}, "x[:, 1:] (view; backward zero-fills)"),
    StepPiece("loss, norm-pix", "masked_mse_loss", {"form": "masked", "norm_pix": True}, True, False,
              "masked_mse_loss", {"form": "full", "norm_pix": True}, "full-form reference loss"),
)
