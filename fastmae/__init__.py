"""fastmae: Masked Autoencoder pretraining with fused Triton kernels and an exact PyTorch reference.

The model (``MaskedAutoencoderViT`` and the official factories), the functional ops (``fastmae.ops``:
the backend is picked per call), the reference path (``fastmae.reference``), masking helpers and
the official checkpoint loader. Importing fastmae touches no GPU and does not import Triton.

The public names are loaded when first used (``fastmae.ops``, ``from fastmae import create_model``):
``import fastmae`` itself does not import torch, so the command line (``python -m fastmae``) can
speak before the seconds torch's import takes.
"""

import importlib

__version__ = "0.1.0"

# public name -> the submodule that defines it (a submodule itself: None)
_PUBLIC = {
    "ops": None, "reference": None, "convert": None, "checkpoints": None,
    # the model
    "MaskGenerator": "masking", "random_masking": "masking",
    "MODELS": "model", "MaskedAutoencoderViT": "model", "create_model": "model",
    "mae_vit_base_patch16": "model", "mae_vit_base_patch16_dec512d8b": "model",
    "mae_vit_huge_patch14": "model", "mae_vit_huge_patch14_dec512d8b": "model",
    "mae_vit_large_patch16": "model", "mae_vit_large_patch16_dec512d8b": "model",
    "mae_vit_micro_patch4": "model", "mae_vit_tiny_patch4": "model",
    "load_official_checkpoint": "checkpoint_files",
    # the functional ops (backend picked per call)
    "decoder_input": "ops", "encoder_input": "ops", "get_backend": "ops", "masked_mse_loss": "ops",
    "masked_tokens": "ops", "masking_ids": "ops", "patchify": "ops", "patchify_gather": "ops",
    "unpatchify": "ops", "use_backend": "ops",
    "get_2d_sincos_pos_embed": "pos_embed", "interpolate_pos_embed": "pos_embed",
    # Interop: converters (fastmae.convert), checkpoint kinds (fastmae.state_dicts), the fine-tuning
    # ViT and layer-wise lr decay (fastmae.vit), the linear probe (fastmae.linprobe). transformers
    # stays optional: fastmae.integrations.hf imports it when used.
    "inspect_state_dict": "state_dicts", "linear_probe": "linprobe",
    "VIT_MODELS": "vit", "VisionTransformer": "vit", "create_vit": "vit", "param_groups_lrd": "vit",
    # the input pipeline's op (the loader around it: ``fastmae.data``, imported on its own)
    "resized_crop": "ops", "IMAGENET_MEAN": "reference", "IMAGENET_STD": "reference",
}

# the earlier names of renamed submodules: fastmae.checkpoints is fastmae.state_dicts
_RENAMED = {"checkpoints": "state_dicts"}

__all__ = sorted(_PUBLIC)


def __getattr__(name):
    """A public name, or any submodule (``fastmae.model``, ``fastmae.data``), imported on first use."""
    if name.startswith("__"):  # dunder probes (copy, pickle, inspect) are never submodules
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name in _PUBLIC:
        module = importlib.import_module(f".{_PUBLIC[name] or _RENAMED.get(name, name)}", __name__)
        value = module if _PUBLIC[name] is None else getattr(module, name)
    else:
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise  # the submodule exists and one of its imports is missing: say which
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
