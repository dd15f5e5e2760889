"""Hugging Face pieces shared by the interop tests: the skip when transformers is missing, a ViTMAE
built from a fastmae model with the same weights.

transformers is an optional extra (``pip install -e '.[interop]'``, which CI installs); without it
the tests that need it skip, saying so.
"""

import importlib.util

import pytest

from fastmae import convert

HAVE_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
requires_transformers = pytest.mark.skipif(
    not HAVE_TRANSFORMERS, reason="needs transformers, the optional extra: pip install -e '.[interop]'")


def hf_twin(model, layout="module"):
    """A ``ViTMAEForPreTraining`` with ``model``'s config and weights, loaded strictly."""
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    hf = ViTMAEForPreTraining(ViTMAEConfig(**convert.hf_config(model)))
    hf.load_state_dict(convert.to_hf(model.state_dict(), layout=layout), strict=True)
    return hf.eval()


def loading_info_is_clean(info):
    """``from_pretrained(..., output_loading_info=True)``'s report holds no missing or unexpected key."""
    return not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"))
