"""The bytes model: what each fused op must move, and what the eager reference path moves.

Two numbers per op and pass, both functions of the shapes and dtypes:

``minimal``
    every input read once, every output written once. A fused kernel cannot move less (caches
    aside), so ``minimal / time`` is the op's *effective bandwidth* and ``minimal / copy bandwidth``
    its ideal time.
``reference``
    the eager reference path (``fastmae.reference.*_ref``, the official algorithm), counting every
    tensor each ATen op reads and every tensor it writes, intermediates included; views are free;
    a table broadcast to every row is read once; gathers read one source element per output.
    ``benchmarks/count_bytes.py`` counts the same thing by running the reference under a dispatch
    mode, and ``benchmarks/test_bytes_model.py`` checks that these formulas equal that count.

Passes: ``fwd`` (forward), ``bwd`` (backward to every input a model would train: images, tokens
and tokens' parameters, ``pred``; never the fixed position tables or the indices) and ``fwdbwd``
(their sum: autograd runs them as two passes).

Symbols: ``N`` batch, ``C`` channels, ``H x W`` image, ``p`` patch, ``L = HW/p²`` patches,
``P = p²C`` values per patch, ``K = int(L(1 - mask_ratio))`` kept, ``M = L - K`` masked, ``D`` the
encoder width, ``Dd`` the decoder width, ``s`` bytes per data element (2 for bf16, 4 for fp32);
indices are int64 (8 bytes), the mask float32 (4 bytes).

The tables built from these formulas (NOTES.md, the training-step table) and the command line are in
``benchmarks/bytes_tables.py``::

    python -m benchmarks.bytes_model                       # the NOTES.md table (ViT-B/16, batch 256, bf16)
    python -m benchmarks.bytes_model --model vit_l16 --batch 64 --dtype fp32 --mask-ratio 0.9
"""

from __future__ import annotations

from dataclasses import dataclass

INDEX_BYTES = 8  # ids_keep / ids_restore / ids_masked are int64
MASK_BYTES = 4  # the float32 mask [N, L]
NOISE_BYTES = 4  # float32 noise [N, L]
NOTES_BANDWIDTH = 3.0e12  # bytes/s: the H100 copy bandwidth the NOTES table's ideal times assume

_DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}

# Model widths: (img_size, patch_size, in_chans, embed_dim, decoder_embed_dim).
MODEL_DIMS = {
    "vit_b16": (224, 16, 3, 768, 512),
    "vit_l16": (224, 16, 3, 1024, 512),
    "vit_h14": (224, 14, 3, 1280, 512),
    "tiny": (32, 4, 3, 128, 96),  # fastmae's mae_vit_tiny_patch4
    "micro": (32, 4, 3, 64, 32),  # fastmae's mae_vit_micro_patch4
}

# Every (op, variant) the model and the benchmarks know, in table order.
OP_VARIANTS = (
    ("patchify", {}),
    ("unpatchify", {}),
    ("patchify_gather", {}),
    ("encoder_input", {}),
    ("encoder_input_official", {}),
    ("decoder_input", {}),
    ("masked_mse_loss", {"form": "full", "norm_pix": False}),
    ("masked_mse_loss", {"form": "full", "norm_pix": True}),
    ("masked_mse_loss", {"form": "masked", "norm_pix": False}),
    ("masked_mse_loss", {"form": "masked", "norm_pix": True}),
    ("masking_ids", {}),
)


def itemsize(dtype) -> int:
    """Bytes per element of a ``torch.dtype`` or a name such as ``"bf16"``."""
    if hasattr(dtype, "itemsize"):
        return int(dtype.itemsize)
    name = str(dtype).replace("torch.", "")
    if name not in _DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPE_BYTES)}")
    return _DTYPE_BYTES[name]


@dataclass(frozen=True)
class MAEShape:
    """The sizes an MAE training step works on."""

    batch: int
    img_size: int
    patch_size: int
    in_chans: int
    embed_dim: int
    decoder_dim: int
    mask_ratio: float
    model: str = ""

    @property
    def num_patches(self) -> int:  # L
        return (self.img_size // self.patch_size) ** 2

    @property
    def len_keep(self) -> int:  # K, as the official code: floor
        return int(self.num_patches * (1 - self.mask_ratio))

    @property
    def num_masked(self) -> int:  # M
        return self.num_patches - self.len_keep

    @property
    def patch_dim(self) -> int:  # P
        return self.patch_size**2 * self.in_chans

    @property
    def grid(self) -> tuple[int, int]:
        side = self.img_size // self.patch_size
        return side, side

    def as_dict(self) -> dict:
        return {
            "model": self.model, "N": self.batch, "C": self.in_chans, "H": self.img_size, "W": self.img_size,
            "p": self.patch_size, "L": self.num_patches, "K": self.len_keep, "M": self.num_masked,
            "P": self.patch_dim, "D": self.embed_dim, "Dd": self.decoder_dim, "mask_ratio": self.mask_ratio,
        }

    def label(self) -> str:
        return f"{self.model} N={self.batch} mask={self.mask_ratio}"


def shape_for(model: str, batch: int, mask_ratio: float) -> MAEShape:
    """``MAEShape`` of one of ``MODEL_DIMS`` at a batch size and mask ratio."""
    if model not in MODEL_DIMS:
        raise ValueError(f"unknown model {model!r}; choose one of {sorted(MODEL_DIMS)}")
    img, p, c, d, dd = MODEL_DIMS[model]
    return MAEShape(batch, img, p, c, d, dd, mask_ratio, model)


@dataclass(frozen=True)
class Traffic:
    """Bytes one pass of one op moves: the minimum, and what the eager reference path moves."""

    minimal: int
    reference: int

    def __add__(self, other: "Traffic") -> "Traffic":
        return Traffic(self.minimal + other.minimal, self.reference + other.reference)


def _passes(fwd: Traffic, bwd: Traffic | None = None) -> dict[str, Traffic]:
    if bwd is None:
        return {"fwd": fwd}
    return {"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd}


# --------------------------------------------------------------------------------------------------
# patchify / unpatchify / patchify_gather
# --------------------------------------------------------------------------------------------------


def patchify_bytes(sh: MAEShape, dtype) -> dict[str, Traffic]:
    """``imgs [N, C, H, W] -> [N, L, P]``; its backward is ``unpatchify`` of the gradient.

    minimal fwd = bwd = ``2·N·L·P·s`` (read the image, write the patches: ``L·P = C·H·W``).
    reference: the reshape and einsum are views and the final reshape copies once, so the same.
    """
    img = sh.batch * sh.num_patches * sh.patch_dim * itemsize(dtype)
    one_copy = Traffic(2 * img, 2 * img)
    return _passes(one_copy, one_copy)


def unpatchify_bytes(sh: MAEShape, dtype) -> dict[str, Traffic]:
    """``[N, L, P] -> [N, C, H, W]``: one copy each way, like ``patchify``."""
    return patchify_bytes(sh, dtype)


def patchify_gather_bytes(sh: MAEShape, dtype) -> dict[str, Traffic]:
    """The visible patches only: ``imgs [N, C, H, W]``, ``ids_keep [N, K] -> [N, K, P]``.

    minimal fwd: ``N·K·8`` ids + ``N·K·P·s`` visible pixels + ``N·K·P·s`` written.
    minimal bwd: ``N·K·P·s`` grad + ``N·K·8`` ids read, ``N·L·P·s`` image grad written (zeros
    where masked).
    reference fwd: patchify all (``2·N·L·P·s``), gather (``N·K·8 + 2·N·K·P·s``).
    reference bwd: gather backward = zero fill ``N·L·P·s`` + scatter-add (read grad and ids,
    read-modify-write ``2·N·K·P·s``), then patchify's backward copy ``2·N·L·P·s``.
    """
    s = itemsize(dtype)
    full = sh.batch * sh.num_patches * sh.patch_dim * s  # N·L·P·s
    kept = sh.batch * sh.len_keep * sh.patch_dim * s  # N·K·P·s
    ids = sh.batch * sh.len_keep * INDEX_BYTES
    fwd = Traffic(ids + 2 * kept, 2 * full + ids + 2 * kept)
    bwd = Traffic(kept + ids + full, full + (ids + 3 * kept) + 2 * full)
    return _passes(fwd, bwd)


# --------------------------------------------------------------------------------------------------
# encoder input
# --------------------------------------------------------------------------------------------------


def _mixed(dtype, table_dtype) -> tuple[int, int, int]:
    """Bytes per element of the activations, the tables/tokens, and the output (type promotion)."""
    s_x = itemsize(dtype)
    s_t = itemsize(table_dtype if table_dtype is not None else dtype)
    return s_x, s_t, max(s_x, s_t)


def encoder_input_bytes(sh: MAEShape, dtype, table_dtype=None) -> dict[str, Traffic]:
    """``x_vis [N, K, D]`` + ``pos_embed[1 + ids_keep]``, ``cls + pos[0]`` first -> ``[N, K+1, D]``.

    ``s`` is x_vis's dtype, ``s_t`` the table's and cls token's (default ``s``), ``s_o`` the
    output's (the promotion: float32 in the model under autocast, whose tables are float32).
    minimal fwd: ``N·K·D·s`` + ``N·K·8`` + table ``(L+1)·D·s_t`` + cls ``D·s_t`` read,
    ``N·(K+1)·D·s_o`` written.
    minimal bwd: ``N·(K+1)·D·s_o`` grad read; ``N·K·D·s`` grad of x_vis and ``D·s_t`` of cls written
    (a custom op's output may not alias its input, so the x_vis grad is a copy).
    reference fwd (``encoder_input_ref``): gather the pos rows (``N·K·8 + 2·N·K·D·s_t``), add
    (``N·K·D·(s + s_t + s_o)``), cls sum (``3·D·s_t``), cat (``D·s_t + N·K·D·s_o`` read, output
    written).
    reference bwd: the x_vis grad is a view of the output grad (free; a cast ``N·K·D·(s_o + s)``
    when the dtypes differ); the cls grad sums column 0 (``N·D·s_o`` read, ``D·s_o`` written).
    """
    s, s_t, s_o = _mixed(dtype, table_dtype)
    n, k, num, d = sh.batch, sh.len_keep, sh.num_patches, sh.embed_dim
    x, out = n * k * d, n * (k + 1) * d  # elements
    ids = n * k * INDEX_BYTES
    minimal_fwd = x * s + ids + (num + 1) * d * s_t + d * s_t + out * s_o
    ref_fwd = (ids + 2 * x * s_t) + (x * (s + s_t + s_o) + 3 * d * s_t) + (d * s_t + x * s_o + out * s_o)
    minimal_bwd = out * s_o + x * s + d * s_t
    ref_bwd = (n * d * s_o + d * s_o) + (x * (s_o + s) if s != s_o else 0)
    return _passes(Traffic(minimal_fwd, ref_fwd), Traffic(minimal_bwd, ref_bwd))


def encoder_input_official_bytes(sh: MAEShape, dtype, table_dtype=None) -> dict[str, Traffic]:
    """The official order, for comparison: ``x [N, L, D] + pos_embed[1:]`` on all ``L``, then gather, cat.

    Same output as ``encoder_input``; the official model embeds all ``L`` patches first. Minimal
    bytes are those of ``encoder_input`` (the fast path never makes ``[N, L, D]``); reference fwd:
    add (``N·L·D·(s + s_o)`` + table), gather (``N·K·8 + 2·N·K·D·s_o``), cls, cat; bwd: gather
    backward (zero fill ``N·L·D·s_o`` + scatter-add ``N·K·8 + 3·N·K·D·s_o``), a cast to x's dtype
    when it differs (``N·L·D·(s_o + s)``), the cls sum.
    """
    s, s_t, s_o = _mixed(dtype, table_dtype)
    n, k, num, d = sh.batch, sh.len_keep, sh.num_patches, sh.embed_dim
    full, x, out = n * num * d, n * k * d, n * (k + 1) * d  # elements
    ids = n * k * INDEX_BYTES
    minimal = encoder_input_bytes(sh, dtype, table_dtype)
    ref_fwd = ((full * (s + s_o) + num * d * s_t) + (ids + 2 * x * s_o) + 3 * d * s_t
               + (d * s_t + x * s_o + out * s_o))
    ref_bwd = ((full * s_o + ids + 3 * x * s_o) + (full * (s_o + s) if s != s_o else 0)
               + (n * d * s_o + d * s_o))
    return _passes(Traffic(minimal["fwd"].minimal, ref_fwd), Traffic(minimal["bwd"].minimal, ref_bwd))


# --------------------------------------------------------------------------------------------------
# decoder input
# --------------------------------------------------------------------------------------------------


def decoder_input_bytes(sh: MAEShape, dtype, table_dtype=None) -> dict[str, Traffic]:
    """``x [N, K+1, Dd]``, ``ids_restore [N, L]``, mask token, ``pos [1, L+1, Dd]`` -> ``[N, L+1, Dd]``.

    ``s`` is x's dtype, ``s_t`` the mask token's and table's, ``s_o`` the output's (promotion).
    minimal fwd: ``N·(K+1)·Dd·s`` + ``N·L·8`` + ``Dd·s_t`` + ``(L+1)·Dd·s_t`` read,
    ``N·(L+1)·Dd·s_o`` written. minimal bwd: output grad ``N·(L+1)·Dd·s_o`` + ids read; x grad
    ``N·(K+1)·Dd·s`` and mask-token grad ``Dd·s_t`` written.
    reference fwd (``decoder_input_ref``): ``repeat`` the mask token (``N·M·Dd·s_t``), cat with the
    visible rows (read ``N·K·Dd·s + N·M·Dd·s_t``, write ``N·L·Dd·s_o``), gather
    (``N·L·8 + 2·N·L·Dd·s_o``), cat cls (``N·Dd·s + N·L·Dd·s_o`` read, ``N·(L+1)·Dd·s_o``
    written), add pos (``2·N·(L+1)·Dd·s_o`` + table).
    reference bwd: gather backward (zero fill ``N·L·Dd·s_o``, scatter-add ``N·L·8 + 3·N·L·Dd·s_o``),
    the repeat's sum (``N·M·Dd·s_o`` read), casts to x's dtype when it differs, x's two slices
    each made whole (zero fill ``N·(K+1)·Dd·s`` + the slice copied in) and added
    (``3·N·(K+1)·Dd·s``).
    """
    s, s_t, s_o = _mixed(dtype, table_dtype)
    n, k, m, num, dd = sh.batch, sh.len_keep, sh.num_masked, sh.num_patches, sh.decoder_dim
    x_in, vis, msk = n * (k + 1) * dd, n * k * dd, n * m * dd  # elements
    full, out, col = n * num * dd, n * (num + 1) * dd, n * dd
    ids = n * num * INDEX_BYTES
    table = (num + 1) * dd * s_t
    minimal_fwd = x_in * s + ids + dd * s_t + table + out * s_o
    ref_fwd = (
        (dd * s_t + msk * s_t)  # mask_token.repeat
        + (vis * s + msk * s_t + full * s_o)  # cat with the visible rows
        + (ids + 2 * full * s_o)  # gather: unshuffle
        + (col * s + full * s_o + out * s_o)  # cat the cls row back
        + (out * s_o + table + out * s_o)  # + decoder_pos_embed
    )
    minimal_bwd = out * s_o + ids + x_in * s + dd * s_t
    ref_bwd = (
        (full * s_o + ids + 3 * full * s_o)  # gather backward: zero fill, scatter-add
        + (msk * s_o + dd * s_o)  # repeat backward: sum over the mask rows
        + ((vis + col) * (s_o + s) if s != s_o else 0)  # grads cast to x's dtype
        + (x_in * s + 2 * vis * s)  # x[:, 1:] backward: zeros, copy the slice in
        + (x_in * s + 2 * col * s)  # x[:, :1] backward: zeros, copy the column in
        + 3 * x_in * s  # the two grads of x summed
    )
    return _passes(Traffic(minimal_fwd, ref_fwd), Traffic(minimal_bwd, ref_bwd))


# --------------------------------------------------------------------------------------------------
# masked MSE loss
# --------------------------------------------------------------------------------------------------


def masked_mse_loss_bytes(
    sh: MAEShape, dtype, form: str = "full", norm_pix: bool = False, imgs_dtype=None
) -> dict[str, Traffic]:
    """MAE's loss; ``form="full"``: ``pred [N, L, P]`` + ``mask [N, L]``; ``"masked"``:
    ``pred [N, M, P]`` + ``ids_masked``.

    ``R`` = rows of pred (``L`` or ``M``). ``imgs_dtype`` defaults to ``dtype`` (the model feeds
    float32 images and a bf16 pred under autocast; the op benchmarks use one dtype).
    minimal fwd: pred ``N·R·P·s`` + the pixels of those patches ``N·R·P·s_img`` + mask ``N·L·4``
    (or ids ``N·M·8``) read, a 4-byte scalar written. Norm-pix changes arithmetic, not bytes.
    minimal bwd: pred, pixels and mask/ids read again (the target is never stored), the pred
    grad ``N·R·P·s`` written. (A kernel that computed the gradient during the forward, as a
    single pass, would need ``fwd + N·R·P·s`` instead of ``fwd + bwd``: see NOTES.md.)
    reference fwd (``masked_mse_loss_ref``): patchify all (``2·N·L·P·s_img``) [masked form: plus
    the gather ``N·M·8 + 2·N·M·P·s_img`` and a ones mask]; norm-pix: mean, var (``2·X`` read),
    subtract and divide (``4·X``) on the target ``X``; ``pred - target`` (read both, write ``E``),
    square (``2·E``), mean over P (``E``), then ``[N, R]``-sized terms.
    reference bwd: the ``[N, R]`` terms, mean backward writes ``E``, pow backward is
    ``grad * (2 * diff.pow(1))``: three kernels, ``7·E``; the subtract passes it through.
    """
    if form not in ("full", "masked"):
        raise ValueError(f"form must be 'full' or 'masked', got {form!r}")
    s_pred = itemsize(dtype)
    s_img = itemsize(imgs_dtype if imgs_dtype is not None else dtype)
    s_err = max(s_pred, s_img)  # dtype of pred - target (type promotion)
    n, num, pd = sh.batch, sh.num_patches, sh.patch_dim
    rows = num if form == "full" else sh.num_masked
    pred = n * rows * pd * s_pred
    pix = n * rows * pd * s_img  # the target patches' pixels
    err = n * rows * pd * s_err  # pred - target and its square
    small = n * rows  # per-patch values
    if form == "full":
        weights = n * num * MASK_BYTES
        target = 2 * n * num * pd * s_img  # patchify
        extra = 0
    else:
        weights = n * sh.num_masked * INDEX_BYTES
        target = 2 * n * num * pd * s_img + (weights + 2 * pix)  # patchify all, then gather
        extra = small * 4  # the ones mask
    norm = 0
    if norm_pix:
        # mean and var read X, write [N, R] each; (X - mean) reads X and mean, writes X;
        # var + eps and ** 0.5 on [N, R]; divide reads X and the std, writes X.
        norm = (2 * (pix + small * s_img) + (pix + small * s_img + pix) + 4 * small * s_img
                + (pix + small * s_img + pix))
    # pred - target, square, mean over P ([N, R] out in s_err)
    core = (pred + pix + err) + 2 * err + (err + small * s_err)
    # * mask (read [N, R] both, write fp32 [N, R]), sum of that and of the mask, where, divide.
    tail = ((small * s_err + small * 4 + small * 4) + (small * 4 + 4) + (small * 4 + 4)
            + (4 + 4 + 4 + 4 + 4 + 4 + 4))
    minimal_fwd = pred + pix + weights + 4
    ref_fwd = target + extra + norm + core + tail
    minimal_bwd = 2 * pred + pix + weights + 4
    # div and sum backward: scalars and an expand (free); * mask backward: the float32 mask read,
    # an fp32 [N, R] written (and cast to the error's dtype when that is narrower);
    # mean backward: the [N, R] grad read, expanded / P into E; pow backward (exponent 2):
    # grad * (2 * diff.pow(1)) is three kernels, 2E + 2E + 3E.
    ref_bwd = (small * 4 + small * 4) + (small * 4 + small * s_err if s_err != 4 else 0)
    ref_bwd += (small * s_err + err) + 7 * err
    if s_err != s_pred:  # the pred grad cast back to pred's dtype
        ref_bwd += err + pred
    return _passes(Traffic(minimal_fwd, ref_fwd), Traffic(minimal_bwd, ref_bwd))


# --------------------------------------------------------------------------------------------------
# masking
# --------------------------------------------------------------------------------------------------


def masking_ids_bytes(sh: MAEShape, dtype=None) -> dict[str, Traffic]:
    """``noise [N, L]`` (fp32) -> ``ids_keep [N, K]``, ``ids_restore [N, L]``, ``ids_masked [N, M]`` (int64),
    ``mask [N, L]`` (fp32).

    minimal: noise read, four outputs written (``ids_keep`` and ``ids_masked`` together: ``N·L·8``). reference: two argsorts (each counted as reading
    its input and writing sorted values and indices once; a real sort makes more passes), the
    ones mask, zeroing the kept columns, a gather.
    """
    n, num, k = sh.batch, sh.num_patches, sh.len_keep
    noise, ids_l = n * num * NOISE_BYTES, n * num * INDEX_BYTES
    mask = n * num * MASK_BYTES
    minimal = noise + ids_l + ids_l + mask  # ids_keep + ids_masked: N·L·8
    reference = (
        (noise + noise + ids_l)  # argsort(noise): read, write values and indices
        + (ids_l + ids_l + ids_l)  # argsort(ids_shuffle)
        + mask  # ones
        + n * k * MASK_BYTES  # mask[:, :K] = 0
        + (mask + ids_l + mask)  # gather(mask, ids_restore)
    )
    return _passes(Traffic(minimal, reference))


_OPS = {
    "patchify": patchify_bytes,
    "unpatchify": unpatchify_bytes,
    "patchify_gather": patchify_gather_bytes,
    "encoder_input": encoder_input_bytes,
    "encoder_input_official": encoder_input_official_bytes,
    "decoder_input": decoder_input_bytes,
    "masked_mse_loss": masked_mse_loss_bytes,
    "masking_ids": masking_ids_bytes,
}


def op_bytes(op: str, shape: MAEShape, dtype, **variant) -> dict[str, Traffic]:
    """``{"fwd": Traffic, "bwd": ..., "fwdbwd": ...}`` for an op (``masking_ids``: ``fwd`` only)."""
    if op not in _OPS:
        raise ValueError(f"unknown op {op!r}; choose one of {sorted(_OPS)}")
    return _OPS[op](shape, dtype, **variant)


def variant_label(op: str, variant: dict) -> str:
    """``masked_mse_loss[masked,norm_pix]`` style names."""
    if not variant:
        return op
    parts = [variant.get("form", "")] + (["norm_pix"] if variant.get("norm_pix") else [])
    return f"{op}[{','.join(p for p in parts if p)}]"


if __name__ == "__main__":
    from benchmarks.bytes_tables import main

    main()
