"""The linear probe (fastmae.linprobe): the official LARS, and top-1 on labelled sets it must and
must not be able to learn.

Data: small synthetic sets made here (the embedded set's labels arrive with fastmae.data): 4 classes,
each a fixed random 32 px pattern plus per-image noise, 240 images, a micro encoder (random init).
A linear head on the frozen features must separate those; the same images with shuffled labels
carry nothing a held-out split could reward. Chance is 25%; with 48 held-out images its standard
deviation is about 6 points, so the bounds below are several deviations from chance either way.
"""

import pytest
import torch

import fastmae
import official_vit
from fastmae.linprobe import LARS, encoder_features, linear_probe


def labelled_set(n=240, classes=4, noise=0.5, seed=0):
    # On the CPU, where the generator draws, also when the GPU test run makes CUDA the default device.
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn(classes, 3, 32, 32, generator=g, device="cpu")  # one per class
    labels = torch.arange(n, device="cpu") % classes
    return patterns[labels] + noise * torch.randn(n, 3, 32, 32, generator=g, device="cpu"), labels


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_lars_steps_as_the_official_optimizer(weight_decay):
    # 2-D weights take the trust-ratio step, 1-D biases the plain one; a zero weight takes ratio 1.
    params = [torch.randn(6, 5), torch.randn(6), torch.zeros(3, 2)]
    mine = [p.clone().requires_grad_() for p in params]
    theirs = [p.clone().requires_grad_() for p in params]
    a = LARS(mine, lr=0.5, weight_decay=weight_decay)
    b = official_vit.LARS(theirs, lr=0.5, weight_decay=weight_decay)
    for step in range(4):
        grads = [torch.randn_like(p) for p in params]
        for group, opt in ((mine, a), (theirs, b)):
            for p, g in zip(group, grads):
                p.grad = g.clone()
            opt.step()
    for p, q in zip(mine, theirs):
        assert p.equal(q)


def test_probe_learns_a_separable_set_and_not_shuffled_labels():
    encoder = fastmae.create_model("mae_vit_micro_patch4")
    imgs, labels = labelled_set()
    # batch 32: 6 steps an epoch, 180 in all (measured over 6 seeds of set and encoder: 100% held-out
    # top-1 on the patterns, 19-31% on shuffled labels)
    kw = dict(holdout=0.2, epochs=30, warmup_epochs=3, batch_size=32)
    good = linear_probe(encoder, imgs, labels, **kw)
    assert (good.num_train, good.num_test, good.num_classes, good.lr) == (192, 48, 4, 6.4)
    assert good.top1 >= 90.0, good
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1), device="cpu")]
    bad = linear_probe(encoder, imgs, shuffled, **kw)
    assert bad.top1 <= 50.0, bad


def test_probe_is_seeded_leaves_the_encoder_and_the_global_rng_alone():
    encoder = fastmae.create_model("mae_vit_micro_patch4").train()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    imgs, labels = labelled_set(n=64)
    rng = torch.get_rng_state()
    a = linear_probe(encoder, imgs, labels, epochs=3, warmup_epochs=1, seed=5)
    assert torch.get_rng_state().equal(rng)
    b = linear_probe(encoder, imgs, labels, epochs=3, warmup_epochs=1, seed=5)
    assert a == b and encoder.training
    assert all(v.equal(before[k]) for k, v in encoder.state_dict().items())


def test_probe_creates_nothing_on_the_default_device():
    # The split, the batch order and the head's init draw from the probe's CPU generator, and the head
    # is built on the CPU then moved to the features' device: a CUDA default device (the GPU test run
    # sets one) changes nothing. ``meta`` stands in for it here: a tensor made there holds no data.
    encoder = fastmae.create_model("mae_vit_micro_patch4")
    imgs, labels = labelled_set(n=40)
    kw = dict(epochs=2, warmup_epochs=1, batch_size=8)
    expected = linear_probe(encoder, imgs, labels, **kw)
    with torch.device("meta"):
        assert linear_probe(encoder, imgs, labels, **kw) == expected


def test_probe_on_a_given_test_split_and_vit_features():
    imgs, labels = labelled_set(n=80)
    vit = fastmae.VisionTransformer.from_checkpoint(fastmae.create_model("mae_vit_micro_patch4").state_dict(),
                                                    num_classes=0)
    feats = encoder_features(vit, imgs, batch_size=7)  # uneven batches
    assert feats.shape == (80, 64) and feats.dtype == torch.float32
    res = linear_probe(vit, imgs[:60], labels[:60], test=(imgs[60:], labels[60:]), epochs=2, warmup_epochs=1)
    assert (res.num_train, res.num_test) == (60, 20)
    with pytest.raises(ValueError, match="holdout"):
        linear_probe(vit, imgs, labels, holdout=1.0)
    with pytest.raises(TypeError, match="VisionTransformer or MaskedAutoencoderViT"):
        encoder_features(torch.nn.Linear(3, 3), imgs)
