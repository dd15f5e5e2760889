"""Inputs and calls for every benchmarked op: one place, shared by the benchmarks and the byte counter.

``make_inputs(op, variant, shape, dtype, device)`` builds realistic inputs (a real random mask,
``K`` kept / ``M`` masked patches per image) and says which of them a model trains through;
``reference_call`` is the official algorithm (``fastmae.reference``), ``fastmae_call`` the public
op in ``fastmae.ops`` on a named backend. All data tensors take the benchmark dtype (pos tables
and tokens included); the mask is float32, indices int64, the noise float32.
"""

from __future__ import annotations

import torch

from fastmae import ops, reference

from .bytes_model import MAEShape


def _masking(sh: MAEShape, device) -> dict[str, torch.Tensor]:
    """A real random masking: ``ids_keep [N, K]``, ``ids_masked [N, M]``, ``ids_restore [N, L]``,
    ``mask [N, L]``."""
    noise = torch.rand(sh.batch, sh.num_patches, device=device)  # [N, L]
    ids_shuffle = torch.argsort(noise, dim=1)  # [N, L]
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # [N, L]
    mask = (ids_restore >= sh.len_keep).float()  # [N, L], 1 = removed
    return {
        "ids_keep": ids_shuffle[:, : sh.len_keep].contiguous(),
        "ids_masked": ids_shuffle[:, sh.len_keep :].contiguous(),
        "ids_restore": ids_restore,
        "mask": mask,
        "noise": noise,
    }


def make_inputs(op: str, variant: dict, sh: MAEShape, dtype: torch.dtype, device, requires_grad: bool = True,
                table_dtype: torch.dtype | None = None, imgs_dtype: torch.dtype | None = None):
    """``(inputs, grad_of)``: keyword inputs of the op, and the names of those a model trains through.

    ``dtype`` is the activations' (tokens, pred, images); ``table_dtype`` the position tables' and
    learned tokens' and ``imgs_dtype`` the loss's images' (both default to ``dtype``; in the model
    under bf16 autocast they are float32).
    """
    n, c, hw = sh.batch, sh.in_chans, sh.img_size
    num, k, m, pd = sh.num_patches, sh.len_keep, sh.num_masked, sh.patch_dim
    d, dd = sh.embed_dim, sh.decoder_dim
    ids = _masking(sh, device)

    def data(*size, grad=False, dt=None):
        t = torch.randn(*size, device=device, dtype=dt or dtype)
        return t.requires_grad_(grad and requires_grad)

    def table(*size, grad=False):
        return data(*size, grad=grad, dt=table_dtype)

    if op == "patchify":
        inputs, grad_of = {"imgs": data(n, c, hw, hw, grad=True)}, ("imgs",)
    elif op == "unpatchify":
        inputs, grad_of = {"x": data(n, num, pd, grad=True)}, ("x",)
    elif op == "patchify_gather":
        inputs, grad_of = {"imgs": data(n, c, hw, hw, grad=True), "ids_keep": ids["ids_keep"]}, ("imgs",)
    elif op == "encoder_input":
        inputs = {"x_vis": data(n, k, d, grad=True), "pos_embed": table(1, num + 1, d),
                  "cls_token": table(1, 1, d, grad=True), "ids_keep": ids["ids_keep"]}
        grad_of = ("x_vis", "cls_token")
    elif op == "encoder_input_official":
        inputs = {"x": data(n, num, d, grad=True), "pos_embed": table(1, num + 1, d),
                  "cls_token": table(1, 1, d, grad=True), "ids_keep": ids["ids_keep"]}
        grad_of = ("x", "cls_token")
    elif op == "decoder_input":
        inputs = {"x": data(n, k + 1, dd, grad=True), "ids_restore": ids["ids_restore"],
                  "mask_token": table(1, 1, dd, grad=True), "pos_embed": table(1, num + 1, dd)}
        grad_of = ("x", "mask_token")
    elif op == "masked_mse_loss":
        imgs = data(n, c, hw, hw, dt=imgs_dtype)
        if variant.get("form", "full") == "full":
            inputs = {"pred": data(n, num, pd, grad=True), "imgs": imgs, "mask": ids["mask"]}
        else:
            inputs = {"pred": data(n, m, pd, grad=True), "imgs": imgs, "ids_masked": ids["ids_masked"]}
        grad_of = ("pred",)
    elif op == "masking_ids":
        inputs, grad_of = {"noise": ids["noise"]}, ()
    else:
        raise ValueError(f"unknown op {op!r}")
    if not requires_grad:
        grad_of = ()
    return inputs, grad_of


def reference_call(op: str, variant: dict, sh: MAEShape):
    """The official algorithm for ``op`` as ``fn(**inputs)``."""
    p, k = sh.patch_size, sh.len_keep
    norm = bool(variant.get("norm_pix", False))
    calls = {
        "patchify": lambda imgs: reference.patchify_ref(imgs, p),
        "unpatchify": lambda x: reference.unpatchify_ref(x, p, sh.grid, sh.in_chans),
        "patchify_gather": lambda imgs, ids_keep: reference.patchify_gather_ref(imgs, ids_keep, p),
        "encoder_input": reference.encoder_input_ref,
        "encoder_input_official": reference.encoder_input_official_ref,
        "decoder_input": reference.decoder_input_ref,
        "masked_mse_loss": (
            (lambda pred, imgs, mask: reference.masked_mse_loss_ref(pred, imgs, mask, p, norm))
            if variant.get("form", "full") == "full"
            else (lambda pred, imgs, ids_masked: reference.masked_mse_loss_ref(
                pred, imgs, None, p, norm, ids_masked))
        ),
        "masking_ids": lambda noise: reference.masking_ids_ref(noise, k),
    }
    return calls[op]


def fastmae_call(op: str, variant: dict, sh: MAEShape, backend: str):
    """The public ``fastmae.ops`` op on ``backend`` as ``fn(**inputs)``."""
    p, k = sh.patch_size, sh.len_keep
    norm = bool(variant.get("norm_pix", False))
    calls = {
        "patchify": lambda imgs: ops.patchify(imgs, p, backend=backend),
        "unpatchify": lambda x: ops.unpatchify(x, p, sh.grid, sh.in_chans, backend=backend),
        "patchify_gather": lambda imgs, ids_keep: ops.patchify_gather(imgs, ids_keep, p, backend=backend),
        "encoder_input": lambda **kw: ops.encoder_input(**kw, backend=backend),
        "decoder_input": lambda **kw: ops.decoder_input(**kw, backend=backend),
        "masked_mse_loss": (
            (lambda pred, imgs, mask: ops.masked_mse_loss(pred, imgs, mask, p, norm, backend=backend))
            if variant.get("form", "full") == "full"
            else (lambda pred, imgs, ids_masked: ops.masked_mse_loss(
                pred, imgs, None, p, norm, ids_masked=ids_masked, backend=backend))
        ),
        "masking_ids": lambda noise: ops.masking_ids(noise, k, backend=backend),
    }
    if op not in calls:
        raise ValueError(f"fastmae has no public op {op!r}")
    return calls[op]
