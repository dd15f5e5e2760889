"""apply_fastmae: a Hugging Face ViTMAE on fastmae's fused ops gives the unpatched model's results.

A micro config (2 encoder blocks, 1 decoder block, 32 px, 4 px patches: 64 patches, 16 kept) with
fastmae's weights, float32. Backends: "torch" (the fast path in torch ops) and "triton" (the kernels,
through the Triton interpreter on CPU, as the suite runs them). Tolerance: the 1e-5 relative float32
contract of the library (tests/helpers.py); masks and ids are compared exactly.
"""

import copy

import pytest
import torch

import fastmae
from hf_helpers import HAVE_TRANSFORMERS, hf_twin
from helpers import rel_err, requires_kernels

pytestmark = pytest.mark.skipif(not HAVE_TRANSFORMERS,
                                reason="needs transformers, the optional extra: pip install -e '.[interop]'")
if HAVE_TRANSFORMERS:
    from fastmae.integrations.hf import apply_fastmae, is_patched, remove_fastmae

BACKENDS = ["torch", pytest.param("triton", marks=requires_kernels)]


def twins(norm_pix=False, **config):
    """The unpatched HF model and a patched copy with the same weights."""
    model = fastmae.create_model("mae_vit_micro_patch4", norm_pix_loss=norm_pix)
    ref = hf_twin(model)
    for k, v in config.items():
        setattr(ref.config, k, v)
    return ref, copy.deepcopy(ref)


def assert_same_outputs(got, want):
    assert got.mask.equal(want.mask) and got.ids_restore.equal(want.ids_restore)
    assert rel_err(got.logits.detach(), want.logits.detach()) <= 1e-5
    assert abs(got.loss.item() - want.loss.item()) <= 1e-5 * want.loss.item()


@pytest.mark.parametrize("norm_pix", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_logits_mask_and_gradients_equal_the_unpatched_model(backend, norm_pix):
    ref, fast = twins(norm_pix)
    apply_fastmae(fast, backend=backend)
    imgs, noise = torch.randn(3, 3, 32, 32), torch.rand(3, 64)
    want, got = ref(imgs, noise=noise), fast(imgs, noise=noise)
    assert_same_outputs(got, want)
    want.loss.backward()
    got.loss.backward()
    grads = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    scale = max(g.abs().max().item() for g in grads.values())
    for name, p in fast.named_parameters():
        if name not in grads:
            assert p.grad is None, name  # the fixed sin-cos tables
        elif name.endswith("k_proj.bias"):
            # zero in exact arithmetic (softmax ignores a shift shared by all keys): both are rounding noise
            assert p.grad.abs().max() <= 1e-5 * scale and grads[name].abs().max() <= 1e-5 * scale
        else:
            assert rel_err(p.grad, grads[name]) <= 1e-5, name


def test_the_fused_ops_are_what_runs(monkeypatch):
    # A patch that silently fell back to HF's own code would pass the equality test above.
    calls = []
    for name in ("masking_ids", "patchify_gather", "encoder_input", "decoder_input", "masked_mse_loss"):
        original = getattr(fastmae.ops, name)
        monkeypatch.setattr(fastmae.ops, name, lambda *a, _o=original, _n=name, **k: calls.append(_n) or _o(*a, **k))
    _, fast = twins()
    apply_fastmae(fast, backend="torch")
    fast(torch.randn(2, 3, 32, 32))
    assert calls == ["masking_ids", "patchify_gather", "encoder_input", "decoder_input", "masked_mse_loss"]


def test_parameters_keys_and_config_are_untouched_and_the_patch_comes_off():
    ref, fast = twins()
    before, config = copy.deepcopy(fast.state_dict()), fast.config.to_dict()
    assert apply_fastmae(fast) is fast and is_patched(fast) and not is_patched(ref)
    apply_fastmae(fast, backend="torch")  # applying again only changes the backend
    assert list(fast.state_dict()) == list(before)
    assert all(v.equal(before[k]) for k, v in fast.state_dict().items()) and fast.config.to_dict() == config
    assert type(fast).forward is type(ref).forward  # the class, and so every other instance, is as it was
    remove_fastmae(fast)
    assert not is_patched(fast) and fast.forward.__func__ is type(ref).forward


@pytest.mark.parametrize("backend", BACKENDS)
def test_interpolate_pos_encoding_uses_hfs_interpolation(backend):
    ref, fast = twins()
    apply_fastmae(fast, backend=backend)
    imgs, noise = torch.randn(2, 3, 48, 40), torch.rand(2, 120)  # a 12 x 10 grid on a model built for 8 x 8
    with torch.no_grad():
        assert_same_outputs(fast(imgs, noise=noise, interpolate_pos_encoding=True),
                            ref(imgs, noise=noise, interpolate_pos_encoding=True))
    with pytest.raises(ValueError, match=r"Input image size \(48\*40\) doesn't match model"):
        fast(imgs, noise=noise)


def test_config_mask_ratio_and_norm_pix_are_read_at_every_call():
    ref, fast = twins()
    apply_fastmae(fast, backend="torch")
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    for model in (ref, fast):
        model.config.mask_ratio, model.config.norm_pix_loss = 0.5, True
    with torch.no_grad():
        got, want = fast(imgs, noise=noise), ref(imgs, noise=noise)
    assert got.mask.sum(dim=1).eq(32).all()
    assert_same_outputs(got, want)
    fast.config.mask_ratio = 0.999
    with pytest.raises(ValueError, match="keeps no patch"):
        fast(imgs)


def test_hidden_states_attentions_and_tuples_work_as_unpatched():
    ref, fast = twins()
    for model in (ref, fast):
        model.set_attn_implementation("eager")  # sdpa returns no attention weights
    apply_fastmae(fast, backend="torch")
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    with torch.no_grad():
        got = fast(imgs, noise=noise, output_hidden_states=True, output_attentions=True)
        want = ref(imgs, noise=noise, output_hidden_states=True, output_attentions=True)
        assert len(got.hidden_states) == len(want.hidden_states) == 3 and len(got.attentions) == 2
        for a, b in zip(got.hidden_states + got.attentions, want.hidden_states + want.attentions):
            assert rel_err(a, b) <= 1e-5
        as_tuple = fast(imgs, noise=noise, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 4 and as_tuple[2].equal(want.mask)
    with pytest.raises(ValueError, match="head_mask"):
        fast(imgs, noise=noise, head_mask=torch.ones(2, 2))


def test_an_encoder_alone_is_patched_too():
    from transformers import ViTMAEModel

    ref_full, _ = twins()
    ref = ViTMAEModel(ref_full.config).eval()
    ref.load_state_dict(ref_full.vit.state_dict(), strict=True)
    fast = apply_fastmae(copy.deepcopy(ref), backend="torch")
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    with torch.no_grad():
        got, want = fast(imgs, noise=noise), ref(imgs, noise=noise)
    assert got.mask.equal(want.mask) and rel_err(got.last_hidden_state, want.last_hidden_state) <= 1e-5


def test_what_it_cannot_patch_is_refused():
    with pytest.raises(TypeError, match="ViTMAEForPreTraining or ViTMAEModel"):
        apply_fastmae(torch.nn.Linear(2, 2))
    _, fast = twins()
    with pytest.raises(ValueError, match="backend"):
        apply_fastmae(fast, backend="cuda")
