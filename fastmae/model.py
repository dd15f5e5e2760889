"""``MaskedAutoencoderViT``: the official MAE model, with a fast path built on ``fastmae.ops``.

Drop-in for facebookresearch/mae ``models_mae.py``: same constructor, factories, methods, state-dict
keys and initialisation. Every MAE-specific step is a call to ``fastmae.ops`` with the model's
``backend`` (``"triton"``, ``"torch"``, ``"reference"`` or ``"auto"``; see ``fastmae.ops``), which
picks the implementation. The one step whose *order* differs is the encoder input:

* ``"reference"`` — the official order: conv patch-embed of every patch, add positions, gather the
  kept ones, prepend cls (``encoder_input_official_ref``);
* every other backend — the fast path: mask first, embed only the visible patches (a GEMM with the
  conv weight in (p, q, c) order) and assemble the encoder input in one pass.

After the decoder blocks, ``forward(full_pred=False)`` keeps only the masked tokens
(``ops.masked_tokens``), so ``decoder_norm`` and ``decoder_pred`` run on those rows alone. Every
path gives the same loss, pred, mask and gradients for the same noise (up to float rounding).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _validate as check
from . import ops
from .layers import Block, PatchEmbed
from .pos_embed import get_2d_sincos_pos_embed, interpolate_pos_embed, square_side
from .reference import encoder_input_official_ref

__all__ = ["MaskedAutoencoderViT", "MODELS", "create_model"]


class MaskedAutoencoderViT(nn.Module):
    """Masked Autoencoder with a ViT backbone (He et al. 2021).

    Args are the official ones, plus ``backend`` (``"auto"``, ``"triton"``, ``"torch"`` or
    ``"reference"``; see ``fastmae.ops``), read at every forward. ``img_size`` may be ``(H, W)``.
    Images of another size (a multiple of the patch) also work: the fixed sin-cos position tables are
    rebuilt for that grid, which is exact; a position table that has been made trainable is
    interpolated bicubically instead.
    """

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=1024, depth=24, num_heads=16,
                 decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4.0,
                 norm_layer=nn.LayerNorm, norm_pix_loss=False, backend="auto"):
        super().__init__()
        check.patch_size(patch_size)
        for name, v in (("in_chans", in_chans), ("embed_dim", embed_dim), ("decoder_embed_dim", decoder_embed_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        ops.check_backend_name(backend)
        check.norm_pix(bool(norm_pix_loss), patch_size * patch_size * in_chans)
        self.backend = backend
        self.in_chans = in_chans
        self.norm_pix_loss = bool(norm_pix_loss)

        # encoder
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.img_size = self.patch_embed.img_size
        if self.img_size[0] % patch_size or self.img_size[1] % patch_size:
            raise ValueError(f"img_size {self.img_size} must be divisible by patch_size {patch_size}")
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(
            [Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer) for _ in range(depth)]
        )
        self.norm = norm_layer(embed_dim)

        # decoder
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            [Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
             for _ in range(decoder_depth)]
        )
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans, bias=True)

        self._pos_cache: dict = {}  # (which, grid, device, dtype) -> table for other resolutions
        self.initialize_weights()

    # ---------------------------------------------------------------------------------------------
    # initialisation (official)
    # ---------------------------------------------------------------------------------------------

    def initialize_weights(self):
        grid = self.patch_embed.grid_size
        self.pos_embed.data.copy_(get_2d_sincos_pos_embed(self.pos_embed.shape[-1], grid, cls_token=True)[None])
        self.decoder_pos_embed.data.copy_(
            get_2d_sincos_pos_embed(self.decoder_pos_embed.shape[-1], grid, cls_token=True)[None]
        )
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))  # like a Linear, not a conv
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)  # the fused qkv as one matrix, as the official code
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    # ---------------------------------------------------------------------------------------------
    # shapes and helpers
    # ---------------------------------------------------------------------------------------------

    @property
    def patch_size(self) -> int:
        return self.patch_embed.patch_size

    def grid_of(self, imgs: torch.Tensor) -> tuple[int, int]:
        p = self.patch_size
        return imgs.shape[-2] // p, imgs.shape[-1] // p

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` -> ``[N, L, p*p*C]``."""
        return ops.patchify(imgs, self.patch_size, backend=self.backend)

    def unpatchify(self, x: torch.Tensor, grid_size: tuple[int, int] | None = None) -> torch.Tensor:
        """``[N, L, p*p*C]`` -> ``[N, C, H, W]``; the grid defaults to the model's when ``L`` matches it."""
        if grid_size is None and x.dim() == 3 and x.shape[1] == self.patch_embed.num_patches:
            grid_size = self.patch_embed.grid_size
        return ops.unpatchify(x, self.patch_size, grid_size, self.in_chans, backend=self.backend)

    def patch_embed_weight(self) -> torch.Tensor:
        """The conv weight ``[D, C, p, q]`` as a GEMM weight over (p, q, c)-ordered patches: ``[D, P]``."""
        w = self.patch_embed.proj.weight
        return w.permute(0, 2, 3, 1).reshape(w.shape[0], -1)

    def _pos_tables(self, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder and decoder position tables ``[1, L+1, D]`` for a ``grid`` of patches."""
        if tuple(grid) == tuple(self.patch_embed.grid_size):
            return self.pos_embed, self.decoder_pos_embed
        return self._pos_table("enc", self.pos_embed, grid), self._pos_table("dec", self.decoder_pos_embed, grid)

    def _pos_table(self, which: str, table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        if table.requires_grad:  # trained positions: interpolate (differentiably), never cache
            return interpolate_pos_embed(table, grid, self.patch_embed.grid_size)
        key = (which, tuple(grid), table.device, table.dtype)
        if key not in self._pos_cache:
            fresh = get_2d_sincos_pos_embed(table.shape[-1], grid, cls_token=True)[None]
            self._pos_cache[key] = fresh.to(device=table.device, dtype=table.dtype)
        return self._pos_cache[key]

    def _check_inputs(self, imgs, mask_ratio, noise):
        check.images("imgs", imgs, self.patch_size, self.in_chans)
        h, w = self.grid_of(imgs)
        len_keep = check.len_keep(h * w, mask_ratio)
        if noise is not None:
            check.noise(noise, imgs.shape[0], h * w, imgs.device)
        else:
            noise = torch.rand(imgs.shape[0], h * w, device=imgs.device)  # [N, L]
        return len_keep, noise

    def _backend(self, device: torch.device) -> str:
        return ops.resolve_backend(self.backend, device)

    # ---------------------------------------------------------------------------------------------
    # encoder
    # ---------------------------------------------------------------------------------------------

    def random_masking(self, x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        """Official signature: ``x [N, L, D]`` -> ``x_masked [N, K, D]``, ``mask [N, L]``, ``ids_restore [N, L]``."""
        from .masking import random_masking

        return random_masking(x, mask_ratio, noise, backend=self.backend)

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        """``imgs [N, C, H, W]`` -> ``latent [N, K+1, D]``, ``mask [N, L]``, ``ids_restore [N, L]``."""
        len_keep, noise = self._check_inputs(imgs, mask_ratio, noise)
        latent, masking = self._encode(imgs, len_keep, noise, self._backend(imgs.device))
        return latent, masking.mask, masking.ids_restore

    def _encode(self, imgs, len_keep, noise, backend):
        """``imgs [N, C, H, W]`` -> ``latent [N, K+1, D]`` and the ``ops.MaskingIds`` of ``noise``."""
        pos_embed, _ = self._pos_tables(self.grid_of(imgs))
        masking = ops.masking_ids(noise, len_keep, backend=backend)
        if backend == "reference":  # the official order: embed every patch, add positions, then gather
            x = encoder_input_official_ref(self.patch_embed(imgs), pos_embed, self.cls_token, masking.ids_keep)
        else:  # embed only the visible patches
            x = ops.patchify_gather(imgs, masking.ids_keep, self.patch_size, out_dtype=_autocast_dtype(imgs),
                                    backend=backend)  # [N, K, P], in the dtype F.linear runs in
            x = F.linear(x, self.patch_embed_weight(), self.patch_embed.proj.bias)  # [N, K, D]
            x = ops.encoder_input(x, pos_embed, self.cls_token, masking.ids_keep, backend=backend)  # [N, K+1, D]
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), masking

    # ---------------------------------------------------------------------------------------------
    # decoder
    # ---------------------------------------------------------------------------------------------

    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor, grid_size: tuple[int, int] | None = None):
        """``latent [N, K+1, D]``, ``ids_restore [N, L]`` -> ``pred [N, L, p*p*C]``.

        ``grid_size`` is needed only for a non-square grid other than the model's own.
        """
        check.tensor("x", x, 3)
        check.tensor("ids_restore", ids_restore, 2, check.INDEX_DTYPES)
        grid = self._grid_for(ids_restore.shape[1], grid_size)
        x = self._decode(x, ids_restore, grid, self._backend(x.device))  # [N, L+1, Dd]
        return self.decoder_pred(self.decoder_norm(x[:, 1:, :]))  # drop cls

    def _grid_for(self, num_patches: int, grid_size):
        if grid_size is not None:
            return tuple(grid_size)
        if num_patches == self.patch_embed.num_patches:
            return self.patch_embed.grid_size
        side = square_side(num_patches)
        if side is None:
            raise ValueError(f"ids_restore has {num_patches} patches: pass grid_size=(h, w)")
        return (side, side)

    def _decode(self, x, ids_restore, grid, backend):
        """The decoder blocks: ``latent [N, K+1, D]`` -> ``[N, L+1, Dd]`` (before ``decoder_norm``)."""
        _, dec_pos = self._pos_tables(grid)
        x = self.decoder_embed(x)  # [N, K+1, Dd]
        x = ops.decoder_input(x, ids_restore, self.mask_token, dec_pos, backend=backend)  # [N, L+1, Dd]
        for blk in self.decoder_blocks:
            x = blk(x)
        return x

    # ---------------------------------------------------------------------------------------------
    # loss and forward
    # ---------------------------------------------------------------------------------------------

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``imgs [N, C, H, W]``, ``pred [N, L, P]``, ``mask [N, L]`` -> scalar (official, 0 when nothing is masked)."""
        check.images("imgs", imgs, self.patch_size, self.in_chans)
        return ops.masked_mse_loss(pred, imgs, mask, self.patch_size, self.norm_pix_loss, backend=self.backend)

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None,
                full_pred: bool = True):
        """``imgs [N, C, H, W]`` -> ``loss`` (scalar), ``pred [N, L, p*p*C]``, ``mask [N, L]`` (1 = removed).

        Args:
            mask_ratio: in ``[0, 1)``; ``int(L * (1 - mask_ratio))`` patches are kept (at least one).
                With ``mask_ratio=0`` nothing is masked and the loss is 0 (the official code gives NaN).
            noise: ``[N, L]`` masking noise (small = kept); ``torch.rand`` when omitted.
            full_pred: ``False`` runs ``decoder_norm`` and ``decoder_pred`` on the masked tokens only,
                which is all the loss needs, and returns ``pred=None``.
        """
        len_keep, noise = self._check_inputs(imgs, mask_ratio, noise)
        backend = self._backend(imgs.device)
        latent, masking = self._encode(imgs, len_keep, noise, backend)
        x = self._decode(latent, masking.ids_restore, self.grid_of(imgs), backend)  # [N, L+1, Dd]
        p, norm_pix = self.patch_size, self.norm_pix_loss
        if full_pred:
            pred = self.decoder_pred(self.decoder_norm(x[:, 1:, :]))  # [N, L, P]
            loss = ops.masked_mse_loss(pred, imgs, masking.mask, p, norm_pix, backend=backend)
            return loss, pred, masking.mask
        x = ops.masked_tokens(x, masking.ids_masked, masking.ids_restore, backend=backend)  # [N, M, Dd]
        pred_masked = self.decoder_pred(self.decoder_norm(x))  # [N, M, P]
        loss = ops.masked_mse_loss(pred_masked, imgs, None, p, norm_pix, ids_masked=masking.ids_masked,
                                   backend=backend)
        return loss, None, masking.mask


def _autocast_dtype(t: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast gives a GEMM on ``t``'s device, or None outside autocast."""
    if torch.is_autocast_enabled(t.device.type):
        return torch.get_autocast_dtype(t.device.type)
    return None


# -------------------------------------------------------------------------------------------------
# factories (official names and configurations, plus small ones that train on a CPU in minutes)
# -------------------------------------------------------------------------------------------------

_LN = partial(nn.LayerNorm, eps=1e-6)


def _factory(**config):
    def make(**kwargs):
        return MaskedAutoencoderViT(**{**config, "mlp_ratio": 4, "norm_layer": _LN, **kwargs})
    return make


mae_vit_base_patch16_dec512d8b = _factory(patch_size=16, embed_dim=768, depth=12, num_heads=12,
                                          decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16)
mae_vit_large_patch16_dec512d8b = _factory(patch_size=16, embed_dim=1024, depth=24, num_heads=16,
                                           decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16)
mae_vit_huge_patch14_dec512d8b = _factory(patch_size=14, embed_dim=1280, depth=32, num_heads=16,
                                          decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16)
# Small configurations for CPUs and tests (32 px images, 4 px patches: an 8 x 8 grid).
mae_vit_tiny_patch4 = _factory(img_size=32, patch_size=4, embed_dim=128, depth=4, num_heads=4,
                               decoder_embed_dim=96, decoder_depth=2, decoder_num_heads=4)
mae_vit_micro_patch4 = _factory(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2,
                                decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)

# recommended names, as the official code
mae_vit_base_patch16 = mae_vit_base_patch16_dec512d8b
mae_vit_large_patch16 = mae_vit_large_patch16_dec512d8b
mae_vit_huge_patch14 = mae_vit_huge_patch14_dec512d8b

MODELS = {
    "mae_vit_base_patch16": mae_vit_base_patch16,
    "mae_vit_large_patch16": mae_vit_large_patch16,
    "mae_vit_huge_patch14": mae_vit_huge_patch14,
    "mae_vit_base_patch16_dec512d8b": mae_vit_base_patch16_dec512d8b,
    "mae_vit_large_patch16_dec512d8b": mae_vit_large_patch16_dec512d8b,
    "mae_vit_huge_patch14_dec512d8b": mae_vit_huge_patch14_dec512d8b,
    "mae_vit_tiny_patch4": mae_vit_tiny_patch4,
    "mae_vit_micro_patch4": mae_vit_micro_patch4,
}


def create_model(name: str, **kwargs) -> MaskedAutoencoderViT:
    """Build a model by factory name (see ``MODELS``); keyword arguments override the configuration."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name](**kwargs)
