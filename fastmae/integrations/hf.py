"""Run a Hugging Face ``ViTMAEForPreTraining`` on fastmae's fused ops, the way Liger-Kernel patches models.

:func:`apply_fastmae` rebinds three ``forward`` methods on one model instance (its class and every
other instance stay as they are):

* ``model.vit.embeddings`` — masking by ``fastmae.ops.masking_ids`` from the same noise, then
  patchify-and-gather of the **visible patches only** (``patchify_gather``), the patch-embed GEMM on
  those rows (the conv weight permuted to (p, q, c) order), and ``encoder_input`` (positions, cls) in
  one pass: the ``(embeddings, mask, ids_restore)`` HF's embeddings return;
* ``model.decoder`` — ``decoder_input`` (mask tokens, unshuffle, positions in one pass), then HF's
  own decoder layers, norm and prediction;
* ``model`` — HF's encoder call and the decoder above, then ``masked_mse_loss`` (target patchified on
  the fly, ``config.norm_pix_loss`` with the unbiased variance, float32 accumulation).

Parameters, buffers, state-dict keys, the config and the HF layers themselves (attention
implementation, gradient checkpointing, ``output_hidden_states``/``output_attentions`` capture) are
untouched; ``config.mask_ratio`` and ``config.norm_pix_loss`` are read at every call, and
``interpolate_pos_encoding=True`` uses HF's own interpolation of both position tables. For the same
``noise`` the loss, logits, mask and ids_restore equal the unpatched model's (float32: within 1e-5).

Differences, and what is refused:
    * ``head_mask`` (transformers 5 accepts it in ``**kwargs`` and ignores it) is refused.
    * With nothing masked (``config.mask_ratio = 0``) the loss is 0 where HF divides 0 by 0 (NaN); a
      ratio that keeps no patch raises ``ValueError`` (HF fails inside ``gather``).
    * The loss is float32 whatever the model's dtype (HF's follows the logits).
    * transformers 4 (whose decoder takes ``output_attentions``) is refused at ``apply_fastmae``.

Example — a Hugging Face ``Trainer`` run on the fused ops (``pip install 'fastmae[interop]'``)::

    import torch
    from transformers import Trainer, TrainingArguments, ViTMAEForPreTraining
    from fastmae.integrations.hf import apply_fastmae

    model = apply_fastmae(ViTMAEForPreTraining.from_pretrained("facebook/vit-mae-base"))
    args = TrainingArguments("out", per_device_train_batch_size=64, learning_rate=1.5e-4,
                             weight_decay=0.05, remove_unused_columns=False, bf16=True)
    collate = lambda batch: {"pixel_values": torch.stack([b["pixel_values"] for b in batch])}
    Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate).train()

``dataset`` yields ``{"pixel_values": [3, 224, 224]}`` normalised images (the ViTMAE image processor's
output). ``model.save_pretrained`` writes the usual files: nothing of fastmae is saved.
"""

from __future__ import annotations

import inspect
import types

import torch
import torch.nn.functional as F

from .. import ops

__all__ = ["apply_fastmae", "remove_fastmae", "is_patched"]

_PATCHED = "_fastmae_backend"  # instance attribute: the backend the patched forwards use


def _transformers():
    try:
        from transformers import ViTMAEForPreTraining, ViTMAEModel
        from transformers.models.vit_mae import modeling_vit_mae
    except ImportError as e:
        raise ImportError(f"fastmae.integrations.hf needs transformers (pip install 'fastmae[interop]'): {e}") from None
    return ViTMAEForPreTraining, ViTMAEModel, modeling_vit_mae


def _bind(module: torch.nn.Module, fn) -> None:
    module.__dict__["forward"] = types.MethodType(fn, module)  # shadows the class's forward, this instance only


def apply_fastmae(model, backend: str = "auto"):
    """Make ``model`` run fastmae's fused ops; returns ``model`` (patched in place).

    Args:
        model: a ``transformers`` ``ViTMAEForPreTraining`` (embeddings, decoder and loss patched) or
            ``ViTMAEModel`` (embeddings only). Applying twice only updates the backend.
        backend: the fastmae backend for the ops (``"auto"``: Triton on CUDA tensors or under
            ``TRITON_INTERPRET=1``, torch otherwise; see ``fastmae.ops``).
    Returns:
        ``model``.
    Raises:
        TypeError: not a ViTMAE model of transformers >= 5.
        ValueError: a ``config.patch_size`` that is not one int (the fused ops cut square patches).
    """
    pretraining_cls, model_cls, modeling = _transformers()
    ops.check_backend_name(backend)
    if not isinstance(model, (pretraining_cls, model_cls)):
        raise TypeError(f"apply_fastmae expects a ViTMAEForPreTraining or ViTMAEModel, got {type(model).__name__}")
    if "output_attentions" in inspect.signature(modeling.ViTMAEDecoder.forward).parameters:
        raise TypeError("apply_fastmae supports the ViTMAE of transformers >= 5; this one is older "
                        "(its decoder takes output_attentions)")
    patch = model.config.patch_size
    if isinstance(patch, bool) or not isinstance(patch, int):
        raise ValueError(f"apply_fastmae needs one int config.patch_size, got {patch!r}")
    vit = model.vit if isinstance(model, pretraining_cls) else model
    targets = [vit.embeddings] + ([model.decoder, model] if isinstance(model, pretraining_cls) else [])
    for module in targets:
        setattr(module, _PATCHED, backend)
    _bind(vit.embeddings, _embeddings_forward)
    if isinstance(model, pretraining_cls):
        _bind(model.decoder, _decoder_forward)
        _bind(model, _pretraining_forward)
    return model


def remove_fastmae(model):
    """Undo :func:`apply_fastmae`: the class's own forwards again. Returns ``model``."""
    for module in model.modules():
        if _PATCHED in module.__dict__:
            del module.__dict__[_PATCHED]
            module.__dict__.pop("forward", None)
    return model


def is_patched(model) -> bool:
    """Whether :func:`apply_fastmae` is in effect on ``model``."""
    return any(_PATCHED in m.__dict__ for m in model.modules())


# -------------------------------------------------------------------------------------------------
# the patched forwards (bound to the HF modules: ``self`` is the HF module)
# -------------------------------------------------------------------------------------------------


def _row_like(table: torch.Tensor, rows: int) -> torch.Tensor:
    """A ``[1, rows, D]`` view (no copy): HF's interpolation methods read only their input's shape."""
    return table[:, :1].expand(1, rows, table.shape[-1])


def _embeddings_forward(self, pixel_values, noise=None, interpolate_pos_encoding=False):
    """``pixel_values [N, C, H, W]`` -> ``embeddings [N, K+1, D]``, ``mask [N, L]``, ``ids_restore [N, L]``."""
    backend = getattr(self, _PATCHED)
    n, c, height, width = pixel_values.shape
    if c != self.patch_embeddings.num_channels:  # HF's checks, HF's messages
        raise ValueError("Make sure that the channel dimension of the pixel values match with the one set in the "
                         f"configuration. Expected {self.patch_embeddings.num_channels} but got {c}.")
    p = self.patch_embeddings.patch_size[0]
    if not interpolate_pos_encoding and (height, width) != tuple(self.image_size):
        raise ValueError(f"Input image size ({height}*{width}) doesn't match model"
                         f" ({self.image_size[0]}*{self.image_size[1]}).")
    num_patches = (height // p) * (width // p)
    if interpolate_pos_encoding:
        pos = self.interpolate_pos_encoding(_row_like(self.position_embeddings, num_patches + 1), height, width)
    else:
        pos = self.position_embeddings  # [1, L+1, D]
    len_keep = int(num_patches * (1 - self.config.mask_ratio))
    if len_keep < 1:
        raise ValueError(f"config.mask_ratio {self.config.mask_ratio} keeps no patch out of {num_patches}")
    if noise is None:
        noise = torch.rand(n, num_patches, device=pixel_values.device)
    masking = ops.masking_ids(noise.to(pixel_values.device), len_keep, backend=backend)
    x = ops.patchify_gather(pixel_values, masking.ids_keep, p, backend=backend)  # [N, K, p*p*C]
    w = self.patch_embeddings.projection.weight  # [D, C, p, p] -> [D, (p, q, c)]
    x = F.linear(x, w.permute(0, 2, 3, 1).reshape(w.shape[0], -1), self.patch_embeddings.projection.bias)
    x = ops.encoder_input(x, pos, self.cls_token, masking.ids_keep, backend=backend)  # [N, K+1, D]
    return x, masking.mask, masking.ids_restore


def _decoder_forward(self, hidden_states, ids_restore, interpolate_pos_encoding=False):
    """``latent [N, K+1, D]``, ``ids_restore [N, L]`` -> ``ViTMAEDecoderOutput(logits [N, L, p*p*C])``."""
    backend = getattr(self, _PATCHED)
    x = self.decoder_embed(hidden_states)  # [N, K+1, Dd]
    num_patches = ids_restore.shape[1]
    if interpolate_pos_encoding:
        pos = self.interpolate_pos_encoding(_row_like(self.decoder_pos_embed, num_patches + 1))
    else:
        pos = self.decoder_pos_embed  # [1, L+1, Dd]
    x = ops.decoder_input(x, ids_restore.to(x.device), self.mask_token, pos, backend=backend)  # [N, L+1, Dd]
    for layer in self.decoder_layers:
        x = layer(x)
    logits = self.decoder_pred(self.decoder_norm(x[:, 1:, :]))  # [N, L, p*p*C], cls dropped
    return _transformers()[2].ViTMAEDecoderOutput(logits=logits)


def _pretraining_forward(self, pixel_values=None, noise=None, interpolate_pos_encoding=None, attention_mask=None,
                         **kwargs):
    """HF's ``ViTMAEForPreTraining.forward`` with the fused masked loss."""
    backend = getattr(self, _PATCHED)
    if kwargs.pop("head_mask", None) is not None:
        raise ValueError("head_mask is not supported: transformers 5's ViTMAE ignores it, so fastmae refuses it")
    return_dict = kwargs.pop("return_dict", None)
    return_dict = getattr(self.config, "return_dict", True) if return_dict is None else return_dict
    if pixel_values is None:
        raise ValueError("pixel_values is required")
    outputs = self.vit(pixel_values, noise=noise, interpolate_pos_encoding=interpolate_pos_encoding,
                       attention_mask=attention_mask, **kwargs)
    logits = self.decoder(outputs.last_hidden_state, outputs.ids_restore,
                          interpolate_pos_encoding=interpolate_pos_encoding).logits
    if not interpolate_pos_encoding and pixel_values.shape[2] != pixel_values.shape[3]:
        raise ValueError("Make sure the pixel values have a squared size that is divisible by the patch size")
    loss = ops.masked_mse_loss(logits, pixel_values, outputs.mask, self.config.patch_size,
                               bool(self.config.norm_pix_loss), backend=backend)
    out = _transformers()[2].ViTMAEForPreTrainingOutput(
        loss=loss, logits=logits, mask=outputs.mask, ids_restore=outputs.ids_restore,
        hidden_states=outputs.hidden_states, attentions=outputs.attentions)
    return out if return_dict else out.to_tuple()
