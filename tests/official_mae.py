"""A line-by-line transcription of the official MAE forward (facebookresearch/mae ``models_mae.py``).

It runs on a fastmae model's parameters, so a test can compare fastmae against the official
algorithm for the same weights. Two changes only: ``noise`` is passed in instead of drawn inside
``random_masking``, and the timm 0.3.2 attention is written out (``q @ k^T * scale``, softmax,
``@ v``) rather than imported. Nothing from fastmae's own ops is used here.
"""

import torch


def attention(attn, x):
    b, n, c = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    a = (q @ k.transpose(-2, -1)) * attn.scale
    a = a.softmax(dim=-1)
    x = (a @ v).transpose(1, 2).reshape(b, n, c)
    return attn.proj(x)


def block(blk, x):
    x = x + attention(blk.attn, blk.norm1(x))
    x = x + blk.mlp.fc2(blk.mlp.act(blk.mlp.fc1(blk.norm2(x))))
    return x


def patchify(model, imgs):
    p = model.patch_embed.proj.weight.shape[2]
    assert imgs.shape[2] == imgs.shape[3] and imgs.shape[2] % p == 0
    h = w = imgs.shape[2] // p
    x = imgs.reshape(shape=(imgs.shape[0], 3, h, p, w, p))
    x = torch.einsum("nchpwq->nhwpqc", x)
    x = x.reshape(shape=(imgs.shape[0], h * w, p**2 * 3))
    return x


def random_masking(x, mask_ratio, noise):
    N, L, D = x.shape
    len_keep = int(L * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, D))
    mask = torch.ones([N, L], device=x.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    return x_masked, mask, ids_restore


def forward_encoder(model, x, mask_ratio, noise):
    x = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
    x = x + model.pos_embed[:, 1:, :]
    x, mask, ids_restore = random_masking(x, mask_ratio, noise)
    cls_token = model.cls_token + model.pos_embed[:, :1, :]
    cls_tokens = cls_token.expand(x.shape[0], -1, -1)
    x = torch.cat((cls_tokens, x), dim=1)
    for blk in model.blocks:
        x = block(blk, x)
    x = model.norm(x)
    return x, mask, ids_restore


def forward_decoder(model, x, ids_restore):
    x = model.decoder_embed(x)
    mask_tokens = model.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
    x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
    x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
    x = torch.cat([x[:, :1, :], x_], dim=1)
    x = x + model.decoder_pos_embed
    for blk in model.decoder_blocks:
        x = block(blk, x)
    x = model.decoder_norm(x)
    x = model.decoder_pred(x)
    x = x[:, 1:, :]
    return x


def forward_loss(model, imgs, pred, mask):
    target = patchify(model, imgs)
    if model.norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    loss = (pred - target) ** 2
    loss = loss.mean(dim=-1)
    loss = (loss * mask).sum() / mask.sum()
    return loss


def forward(model, imgs, mask_ratio, noise):
    latent, mask, ids_restore = forward_encoder(model, imgs, mask_ratio, noise)
    pred = forward_decoder(model, latent, ids_restore)
    loss = forward_loss(model, imgs, pred, mask)
    return loss, pred, mask


def official_state_dict_shapes(patch_size, embed_dim, depth, decoder_embed_dim, decoder_depth, num_patches,
                               in_chans=3, mlp_ratio=4):
    """The official model's state-dict keys and shapes, written out from models_mae.py + timm 0.3.2."""
    shapes = {
        "cls_token": (1, 1, embed_dim),
        "pos_embed": (1, num_patches + 1, embed_dim),
        "mask_token": (1, 1, decoder_embed_dim),
        "decoder_pos_embed": (1, num_patches + 1, decoder_embed_dim),
        "patch_embed.proj.weight": (embed_dim, in_chans, patch_size, patch_size),
        "patch_embed.proj.bias": (embed_dim,),
    }

    def blocks(prefix, n, d):
        for i in range(n):
            b = f"{prefix}.{i}."
            shapes.update({
                b + "norm1.weight": (d,), b + "norm1.bias": (d,),
                b + "attn.qkv.weight": (3 * d, d), b + "attn.qkv.bias": (3 * d,),
                b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
                b + "norm2.weight": (d,), b + "norm2.bias": (d,),
                b + "mlp.fc1.weight": (mlp_ratio * d, d), b + "mlp.fc1.bias": (mlp_ratio * d,),
                b + "mlp.fc2.weight": (d, mlp_ratio * d), b + "mlp.fc2.bias": (d,),
            })

    blocks("blocks", depth, embed_dim)
    shapes.update({"norm.weight": (embed_dim,), "norm.bias": (embed_dim,),
                   "decoder_embed.weight": (decoder_embed_dim, embed_dim), "decoder_embed.bias": (decoder_embed_dim,)})
    blocks("decoder_blocks", decoder_depth, decoder_embed_dim)
    shapes.update({"decoder_norm.weight": (decoder_embed_dim,), "decoder_norm.bias": (decoder_embed_dim,),
                   "decoder_pred.weight": (patch_size**2 * in_chans, decoder_embed_dim),
                   "decoder_pred.bias": (patch_size**2 * in_chans,)})
    return shapes
