"""What is benchmarked, for the per-op suite, the bytes model and the training step alike: one ``Op``
descriptor per fused op (its call's arguments, reference, minimal bytes), the shapes read from the
model (``shape_for``), and the fused ops of a training step (``STEP``). Symbols: ``benchmarks/NOTES.md``.
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

    def as_dict(self) -> dict:  # the symbols, as every result stores them
        return {"model": self.model, "N": self.batch, "C": self.in_chans, "H": self.img_size[0], "W": self.img_size[1],
                "p": self.patch_size, "L": self.num_patches, "K": self.len_keep, "M": self.num_masked,
                "P": self.patch_dim, "D": self.embed_dim, "Dd": self.decoder_dim, "mask_ratio": self.mask_ratio}


@lru_cache(maxsize=None)
def shape_for(model: str, batch: int, mask_ratio: float) -> MAEShape:
    """The sizes of ``fastmae.create_model(model)``, built on the ``meta`` device (no size table here)."""
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


class Inputs:
    """An op's input tensors at one shape and dtypes: ``data`` activations, ``table`` position tables and
    learned tokens, ``imgs`` images, ``ids`` from one real random masking (``mask`` float32, 1 = removed)."""

    def __init__(self, sh: MAEShape, dtype, device, table_dtype=None, imgs_dtype=None, requires_grad=True):
        self.dtype, self.device, self.requires_grad = dtype, device, requires_grad
        self.table_dtype, self.imgs_dtype = table_dtype or dtype, imgs_dtype or dtype
        noise = torch.rand(sh.batch, sh.num_patches, device=device)  # small noise is kept
        shuffle = torch.argsort(noise, dim=1)  # [N, L]
        restore = torch.argsort(shuffle, dim=1)  # [N, L]
        k = sh.len_keep
        self.ids = {"noise": noise, "ids_keep": shuffle[:, :k].contiguous(), "ids_masked": shuffle[:, k:].contiguous(),
                    "ids_restore": restore, "mask": (restore >= k).float()}

    def data(self, *size, grad=False, dtype=None):
        t = torch.randn(*size, device=self.device, dtype=dtype or self.dtype)
        return t.requires_grad_(grad and self.requires_grad)

    def table(self, *size, grad=False):
        return self.data(*size, grad=grad, dtype=self.table_dtype)

    def imgs(self, sh: MAEShape, grad=False, dtype=None):  # [N, C, H, W]
        return self.data(sh.batch, sh.in_chans, *sh.img_size, grad=grad, dtype=dtype)


class Op:
    """One fused op as the benchmarks and the bytes model see it. Adding one here adds it to the bytes
    tables; a ``test_bench_<op>.py`` with a ``bench_op`` marker times it."""

    name: str
    kernels: str  # the module of fastmae.kernels that runs it (its compile specs: tools/kernel_specs/<kernels>.py)
    variants: tuple = ({},)
    passes: tuple = ("fwd", "bwd", "fwdbwd")
    input_dtype = None  # a fixed dtype of its data input, whatever the model's (masking_ids: float32 noise)
    # The compile specs (tools/kernel_specs) of its launches in a bf16-autocast training step at the
    # headline shape (test_bytes_model checks them against ``minimal + extra - outside_kernels``).
    step_launches: tuple = ()

    def inputs(self, sh: MAEShape, t: Inputs, variant: dict, reference: bool) -> dict:
        """The keyword arguments of a call, tensors and the others (``reference``: of the reference call)."""
        raise NotImplementedError

    def reference(self):  # the official algorithm
        return getattr(reference, f"{self.name}_ref")

    def minimal(self, sh: MAEShape, t: dict, s: dict, out_itemsize: int | None) -> dict[str, int]:
        """Bytes per pass when every input is read once and every output written once: ``s`` bytes per
        element of each input tensor, ``out_itemsize`` the written rows' when not the input's."""
        raise NotImplementedError

    def extra(self, sh: MAEShape, variant: dict) -> int:
        """Bytes its kernels move beyond the minimal ones in a training step (fwd + bwd)."""
        return 0

    def outside_kernels(self, sh: MAEShape) -> int:  # bytes its launchers move in torch ops in that step
        return 0


class Patchify(Op):
    name, kernels = "patchify", "patchify"

    def inputs(self, sh, t, variant, reference):
        return {"imgs": t.imgs(sh, grad=True), "patch_size": sh.patch_size}

    def minimal(self, sh, t, s, out_itemsize):  # read the image, write the patches (L·P = C·H·W); back alike
        one_copy = 2 * sh.batch * sh.num_patches * sh.patch_dim * s.get("imgs", s.get("x"))
        return {"fwd": one_copy, "bwd": one_copy}


class Unpatchify(Patchify):
    name = "unpatchify"

    def inputs(self, sh, t, variant, reference):
        return {"x": t.data(sh.batch, sh.num_patches, sh.patch_dim, grad=True), "patch_size": sh.patch_size,
                "grid_size": sh.grid, "in_chans": sh.in_chans}


class PatchifyGather(Op):
    name, kernels = "patchify_gather", "patchify"
    step_launches = ("patchify_gather_bf16",)  # forward only: the images need no gradient

    def inputs(self, sh, t, variant, reference):
        return {"imgs": t.imgs(sh, grad=True), "ids_keep": t.ids["ids_keep"], "patch_size": sh.patch_size}

    def minimal(self, sh, t, s, out_itemsize):
        # fwd: ids + visible pixels read, rows written; bwd: row grads + ids read, the whole image grad written
        n, k, pd = sh.batch, sh.len_keep, sh.patch_dim
        kept, ids, rows = n * k * pd * s["imgs"], n * k * s["ids_keep"], n * k * pd * (out_itemsize or s["imgs"])
        return {"fwd": ids + kept + rows, "bwd": rows + ids + n * sh.num_patches * pd * s["imgs"]}


class EncoderInput(Op):
    name, kernels = "encoder_input", "encoder_input"
    step_launches = ("encoder_input_fwd_bf16_fp32_tables", "encoder_input_bwd_fp32_cls")

    def inputs(self, sh, t, variant, reference):
        n, num, k, d = sh.batch, sh.num_patches, sh.len_keep, sh.embed_dim
        x = {"x": t.data(n, num, d, grad=True)} if reference else {"x_vis": t.data(n, k, d, grad=True)}
        return {**x, "pos_embed": t.table(1, num + 1, d), "cls_token": t.table(1, 1, d, grad=True),
                "ids_keep": t.ids["ids_keep"]}

    def reference(self):
        return reference.encoder_input_official_ref  # the official encoder order, on x [N, L, D]

    def minimal(self, sh, t, s, out_itemsize):
        # fwd: x_vis + ids + table (L+1)·D + cls D read, N·(K+1)·D written; bwd: grad read, x_vis and cls
        # grads written (a custom op's output may not alias its input: the x_vis grad is a copy)
        n, k, d, st = sh.batch, sh.len_keep, sh.embed_dim, s["pos_embed"]
        x, out = n * k * d * s["x_vis"], n * (k + 1) * d * max(s["x_vis"], st)
        return {"fwd": x + n * k * s["ids_keep"] + (sh.num_patches + 1) * d * st + d * st + out,
                "bwd": out + x + d * st}

    def extra(self, sh, variant):  # the cls partials, [cdiv(N, samples per program), D] float32, written then summed
        return 2 * self._cls_partials(sh) * sh.embed_dim * 4

    def outside_kernels(self, sh):
        # the x_vis gradient: the float32 gradient's token rows cast to the bf16 x_vis (read, written);
        # the cls partials read and summed into the cls gradient (float32)
        n, k, d = sh.batch, sh.len_keep, sh.embed_dim
        return n * k * d * (4 + 2) + self._cls_partials(sh) * d * 4 + d * 4

    @staticmethod
    def _cls_partials(sh):
        from fastmae.kernels import encoder_input
        return -(-sh.batch // encoder_input._BWD_N_PER_PROG)


class DecoderInput(Op):
    name, kernels = "decoder_input", "decoder_input"
    step_launches = ("decoder_input_fwd_bf16_fp32_tables", "decoder_input_bwd_fp32_to_bf16")

    def inputs(self, sh, t, variant, reference):
        n, num, k, dd = sh.batch, sh.num_patches, sh.len_keep, sh.decoder_dim
        return {"x": t.data(n, k + 1, dd, grad=True), "ids_restore": t.ids["ids_restore"],
                "mask_token": t.table(1, 1, dd, grad=True), "pos_embed": t.table(1, num + 1, dd)}

    def minimal(self, sh, t, s, out_itemsize):
        # fwd: x [N, K+1] + ids_restore + mask token + table (L+1)·Dd read, N·(L+1)·Dd written;
        # bwd: grad + ids read, x and mask-token grads written
        n, num, dd, st = sh.batch, sh.num_patches, sh.decoder_dim, s["pos_embed"]
        x, ids = n * (sh.len_keep + 1) * dd * s["x"], n * num * s["ids_restore"]
        out = n * (num + 1) * dd * max(s["x"], st)
        return {"fwd": x + ids + dd * st + (num + 1) * dd * st + out, "bwd": out + ids + x + dd * st}

    def extra(self, sh, variant):
        # the mask-token partials, [groups * row blocks, Dd] float32, written then summed
        return 2 * self._partial_rows(sh) * sh.decoder_dim * 4

    def outside_kernels(self, sh):  # the partials read and summed into the mask token's gradient (float32)
        return (self._partial_rows(sh) + 1) * sh.decoder_dim * 4

    @staticmethod
    def _partial_rows(sh):  # the float32 gradient of a bf16-autocast step, on an H100's 132 SMs
        from fastmae.kernels import decoder_input
        return decoder_input.mask_partial_rows(sh.batch, sh.num_patches, sh.decoder_dim, 4, 132)


class MaskedTokens(Op):
    name, kernels = "masked_tokens", "masked_tokens"
    step_launches = ("masked_tokens_fwd_fp32", "masked_tokens_bwd_fp32")  # the float32 residual stream

    def inputs(self, sh, t, variant, reference):
        return {"x": t.data(sh.batch, sh.num_patches + 1, sh.decoder_dim, grad=True),
                "ids_masked": t.ids["ids_masked"], "ids_restore": t.ids["ids_restore"]}

    def minimal(self, sh, t, s, out_itemsize):
        # fwd: N·M·Dd read + ids_masked + N·M·Dd written; bwd: N·M·Dd grad + ids_restore read,
        # the whole N·(L+1)·Dd grad written (each row once, zeros where not masked)
        n, dd = sh.batch, sh.decoder_dim
        rows = n * sh.num_masked * dd * s["x"]
        return {"fwd": 2 * rows + n * sh.num_masked * s["ids_masked"],
                "bwd": rows + n * sh.num_patches * s["ids_restore"] + n * (sh.num_patches + 1) * dd * s["x"]}


class DropCls(MaskedTokens):
    """What ``masked_tokens`` replaces: the official decoder drops cls (``x[:, 1:]``); reference only."""

    name, kernels = "drop_cls", ""
    step_launches = ()

    def inputs(self, sh, t, variant, reference):
        return {"x": t.data(sh.batch, sh.num_patches + 1, sh.decoder_dim, grad=True)}

    def reference(self):
        return lambda x: x[:, 1:, :]


class MaskedMSELoss(Op):
    name, kernels = "masked_mse_loss", "masked_mse_loss"
    variants = tuple({"form": f, "norm_pix": n} for f in ("full", "masked") for n in (False, True))
    step_launches = ("masked_mse_loss_fwd_masked", "masked_mse_loss_sum_masked", "masked_mse_loss_bwd_masked")

    def inputs(self, sh, t, variant, reference):
        full = variant.get("form", "full") == "full"
        rows, weights = (sh.num_patches, "mask") if full else (sh.num_masked, "ids_masked")
        return {"pred": t.data(sh.batch, rows, sh.patch_dim, grad=True), "imgs": t.imgs(sh, dtype=t.imgs_dtype),
                weights: t.ids[weights], **({} if full else {"mask": None}), "patch_size": sh.patch_size,
                "norm_pix_loss": bool(variant.get("norm_pix"))}

    def minimal(self, sh, t, s, out_itemsize):
        # fwd: pred + its patches' pixels + mask (or ids) read, a scalar written; bwd: the same read
        # again (the target is never stored) and the pred grad written. Norm-pix: arithmetic only.
        weights = t["mask"] if t.get("mask") is not None else t["ids_masked"]
        rows = t["pred"].shape[1]
        pred, pix = sh.batch * rows * sh.patch_dim * s["pred"], sh.batch * rows * sh.patch_dim * s["imgs"]
        read = pred + pix + weights.numel() * weights.element_size()
        return {"fwd": read + 4, "bwd": read + pred + 4}

    def extra(self, sh, variant):
        # the forward's float32 partials (one per program; two in the full form, the weights' sum too)
        # written and read back; the final sum writes loss and 1 / den, the backward reads both (the
        # minimum: the loss written, its gradient read). The programs from the launcher itself, on meta tensors.
        from fastmae.kernels import masked_mse_loss
        t = self.inputs(sh, Inputs(sh, torch.bfloat16, "meta"), variant, reference=False)
        programs, _, _ = masked_mse_loss._launch_args(t["pred"], t["imgs"], t.get("mask"),
                                                      t.get("ids_masked"), sh.patch_size, True)
        return 2 * programs * 4 * (2 if "ids_masked" not in t else 1) + 4 + 4


class MaskingIds(Op):
    name, kernels = "masking_ids", "masking_ids"
    step_launches = ("masking_ids",)
    passes, input_dtype = ("fwd",), torch.float32  # the noise is float32 whatever the model

    def inputs(self, sh, t, variant, reference):
        return {"noise": t.ids["noise"], "len_keep": sh.len_keep}

    def minimal(self, sh, t, s, out_itemsize):  # noise read; ids_keep + ids_masked, ids_restore, the mask written
        return {"fwd": sh.batch * sh.num_patches * (s["noise"] + 8 + 8 + 4)}


# Every op, in table order (drop_cls: a reference piece of the step, not a fused op).
OPS = {op.name: op for op in (Patchify(), Unpatchify(), PatchifyGather(), EncoderInput(), DecoderInput(),
                              MaskedTokens(), MaskedMSELoss(), MaskingIds(), DropCls())}
OP_VARIANTS = tuple((op.name, v) for op in OPS.values() if op.kernels for v in op.variants)


def variant_label(op: str, variant: dict) -> str:  # masked_mse_loss[masked,norm_pix]
    parts = [p for p in (variant.get("form"), "norm_pix" if variant.get("norm_pix") else None) if p]
    return f"{op}[{','.join(parts)}]" if parts else op


def _op(name: str) -> Op:
    if name not in OPS:
        raise ValueError(f"unknown op {name!r}; choose one of {sorted(OPS)}")
    return OPS[name]


def make_inputs(op: str, variant: dict, sh: MAEShape, dtype: torch.dtype, device, *, reference: bool = False,
                table_dtype: torch.dtype | None = None, imgs_dtype: torch.dtype | None = None,
                requires_grad: bool = True) -> tuple[dict, tuple[str, ...]]:
    """``(kwargs, grad_of)``: the op's keyword arguments and the names of the tensors a model trains
    through; ``dtype`` the activations', ``table_dtype`` and ``imgs_dtype`` (default ``dtype``) the
    tables' and tokens' and the loss's images'; ``reference``: the reference call's."""
    kwargs = _op(op).inputs(sh, Inputs(sh, dtype, device, table_dtype, imgs_dtype, requires_grad), variant, reference)
    return kwargs, tuple(k for k, t in kwargs.items() if isinstance(t, torch.Tensor) and t.requires_grad)


def op_call(op: str, backend: str | None = None):
    """The official algorithm (``backend=None``) or ``fastmae.ops.<op>`` on ``backend``."""
    return _op(op).reference() if backend is None else partial(getattr(ops, op), backend=backend)


class StepPiece(NamedTuple):
    """A fused op of the fast path's training step and the official code it replaces (``None``: none
    separable)."""

    piece: str
    op: str
    variant: dict
    backward: bool  # the step differentiates through it
    fp32_input: bool  # its data input is float32 under autocast (images, the residual stream)
    official: str | None
    official_variant: dict
    official_label: str

    def dtypes(self, amp_dtype: torch.dtype) -> dict:
        """``make_inputs`` keywords at the model's dtypes under ``amp_dtype`` autocast."""
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
