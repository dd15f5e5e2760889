"""fastmae: Masked Autoencoder pretraining with fused Triton kernels and an exact PyTorch reference.

The model (``MaskedAutoencoderViT`` and the official factories), the functional ops (``fastmae.ops``:
the backend is picked per call), the reference path (``fastmae.reference``), masking helpers and
the official checkpoint loader. Importing fastmae touches no GPU and does not import Triton.
"""

from . import ops, reference
from .masking import MaskGenerator, random_masking
from .model import (
    MODELS,
    MaskedAutoencoderViT,
    create_model,
    mae_vit_base_patch16,
    mae_vit_base_patch16_dec512d8b,
    mae_vit_huge_patch14,
    mae_vit_huge_patch14_dec512d8b,
    mae_vit_large_patch16,
    mae_vit_large_patch16_dec512d8b,
    mae_vit_micro_patch4,
    mae_vit_tiny_patch4,
)
from .checkpoint_files import load_official_checkpoint
from .ops import (
    decoder_input,
    encoder_input,
    get_backend,
    masked_mse_loss,
    masked_tokens,
    masking_ids,
    patchify,
    patchify_gather,
    unpatchify,
    use_backend,
)
from .pos_embed import get_2d_sincos_pos_embed, interpolate_pos_embed

__version__ = "0.1.0"

__all__ = [
    "MODELS", "MaskGenerator", "MaskedAutoencoderViT", "create_model", "decoder_input", "encoder_input",
    "get_2d_sincos_pos_embed", "get_backend", "interpolate_pos_embed", "load_official_checkpoint",
    "mae_vit_base_patch16", "mae_vit_base_patch16_dec512d8b", "mae_vit_huge_patch14",
    "mae_vit_huge_patch14_dec512d8b", "mae_vit_large_patch16", "mae_vit_large_patch16_dec512d8b",
    "mae_vit_micro_patch4", "mae_vit_tiny_patch4", "masked_mse_loss", "masked_tokens", "masking_ids", "ops", "patchify", "patchify_gather",
    "random_masking", "reference", "unpatchify", "use_backend",
]

# Interop: converters (fastmae.convert), checkpoint kinds (fastmae.checkpoints), the fine-tuning ViT
# and layer-wise lr decay (fastmae.vit), the linear probe (fastmae.linprobe). transformers stays
# optional: fastmae.integrations.hf imports it when used.
from . import convert  # noqa: E402
from . import state_dicts as checkpoints  # noqa: E402
from .state_dicts import inspect_state_dict  # noqa: E402
from .linprobe import linear_probe  # noqa: E402
from .vit import VIT_MODELS, VisionTransformer, create_vit, param_groups_lrd  # noqa: E402

__all__ += ["VIT_MODELS", "VisionTransformer", "checkpoints", "convert", "create_vit", "inspect_state_dict",
            "linear_probe", "param_groups_lrd"]

# the input pipeline's op (the loader around it: ``fastmae.data``, imported on its own)
from .ops import resized_crop  # noqa: E402
from .reference import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

__all__ += ["IMAGENET_MEAN", "IMAGENET_STD", "resized_crop"]
