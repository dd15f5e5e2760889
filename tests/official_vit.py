"""A transcription of the official MAE fine-tuning code, to test ``fastmae.vit`` against.

From facebookresearch/mae: ``models_vit.VisionTransformer.forward_features`` on timm 0.3.2 (its
``Block`` and ``drop_path`` written out), ``util/lr_decay.param_groups_lrd``,
``util/pos_embed.interpolate_pos_embed`` and ``util/lars.LARS`` (the linear probe's optimiser). It
runs on a fastmae model's parameters (timm's names), so a test compares fastmae against the official
algorithm for the same weights; the attention is the explicit ``softmax(q k^T * scale) v``. Nothing
from fastmae's own code is used here.
"""

import torch


def timm_drop_path(x, drop_prob, training):
    # timm 0.3.2 timm/models/layers/drop.py
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = keep_prob + torch.rand(shape, dtype=x.dtype, device=x.device)
    random_tensor.floor_()
    return x.div(keep_prob) * random_tensor


def attention(attn, x):
    b, n, c = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    a = ((q @ k.transpose(-2, -1)) * attn.scale).softmax(dim=-1)
    return attn.proj((a @ v).transpose(1, 2).reshape(b, n, c))


def block(blk, x, drop_prob, training):
    # timm 0.3.2 Block: one DropPath module on both residual branches
    x = x + timm_drop_path(attention(blk.attn, blk.norm1(x)), drop_prob, training)
    x = x + timm_drop_path(blk.mlp.fc2(blk.mlp.act(blk.mlp.fc1(blk.norm2(x)))), drop_prob, training)
    return x


def forward_features(model, x, global_pool, drop_path_rate=0.0, training=False):
    # models_vit.VisionTransformer.forward_features; timm 0.3.2's stochastic depth decay rule
    dpr = [r.item() for r in torch.linspace(0, drop_path_rate, len(model.blocks))]
    B = x.shape[0]
    x = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
    cls_tokens = model.cls_token.expand(B, -1, -1)
    x = torch.cat((cls_tokens, x), dim=1)
    x = x + model.pos_embed
    for blk, p in zip(model.blocks, dpr):
        x = block(blk, x, p, training)
    if global_pool:
        x = x[:, 1:, :].mean(dim=1)
        return model.fc_norm(x)
    x = model.norm(x)
    return x[:, 0]


def get_layer_id_for_vit(name, num_layers):
    if name in ["cls_token", "pos_embed"]:
        return 0
    elif name.startswith("patch_embed"):
        return 0
    elif name.startswith("blocks"):
        return int(name.split(".")[1]) + 1
    else:
        return num_layers


def param_groups_lrd(model, weight_decay=0.05, no_weight_decay_list=[], layer_decay=0.75):
    """The official function; returns (groups, names) so a test can compare both."""
    param_group_names = {}
    param_groups = {}
    num_layers = len(model.blocks) + 1
    layer_scales = list(layer_decay ** (num_layers - i) for i in range(num_layers + 1))
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim == 1 or n in no_weight_decay_list:
            g_decay = "no_decay"
            this_decay = 0.0
        else:
            g_decay = "decay"
            this_decay = weight_decay
        layer_id = get_layer_id_for_vit(n, num_layers)
        group_name = "layer_%d_%s" % (layer_id, g_decay)
        if group_name not in param_group_names:
            this_scale = layer_scales[layer_id]
            param_group_names[group_name] = {"lr_scale": this_scale, "weight_decay": this_decay, "params": []}
            param_groups[group_name] = {"lr_scale": this_scale, "weight_decay": this_decay, "params": []}
        param_group_names[group_name]["params"].append(n)
        param_groups[group_name]["params"].append(p)
    return list(param_groups.values()), list(param_group_names.values())


def interpolate_pos_embed(model, checkpoint_model):
    # util/pos_embed.py: square grids, bicubic, class token kept
    if "pos_embed" in checkpoint_model:
        pos_embed_checkpoint = checkpoint_model["pos_embed"]
        embedding_size = pos_embed_checkpoint.shape[-1]
        num_patches = model.patch_embed.num_patches
        num_extra_tokens = model.pos_embed.shape[-2] - num_patches
        orig_size = int((pos_embed_checkpoint.shape[-2] - num_extra_tokens) ** 0.5)
        new_size = int(num_patches ** 0.5)
        if orig_size != new_size:
            extra_tokens = pos_embed_checkpoint[:, :num_extra_tokens]
            pos_tokens = pos_embed_checkpoint[:, num_extra_tokens:]
            pos_tokens = pos_tokens.reshape(-1, orig_size, orig_size, embedding_size).permute(0, 3, 1, 2)
            pos_tokens = torch.nn.functional.interpolate(
                pos_tokens, size=(new_size, new_size), mode="bicubic", align_corners=False)
            pos_tokens = pos_tokens.permute(0, 2, 3, 1).flatten(1, 2)
            checkpoint_model["pos_embed"] = torch.cat((extra_tokens, pos_tokens), dim=1)


class LARS(torch.optim.Optimizer):
    # util/lars.py
    def __init__(self, params, lr=0, weight_decay=0, momentum=0.9, trust_coefficient=0.001):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                dp = p.grad
                if dp is None:
                    continue
                if p.ndim > 1:
                    dp = dp.add(p, alpha=g["weight_decay"])
                    param_norm = torch.norm(p)
                    update_norm = torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(param_norm > 0.,
                                    torch.where(update_norm > 0,
                                                (g["trust_coefficient"] * param_norm / update_norm), one),
                                    one)
                    dp = dp.mul(q)
                param_state = self.state[p]
                if "mu" not in param_state:
                    param_state["mu"] = torch.zeros_like(p)
                mu = param_state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])
