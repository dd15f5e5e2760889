"""The checks every token op's tests run (encoder_input, decoder_input, masked_tokens), written once.

Each takes the op as ``fn(**args, backend=...)`` (a ``fastmae.ops`` function) or as the raw kernel
function ``kernel_fn(**args)``, and ``args``: the op's keyword arguments, float tensors (those that
``requires_grad`` are differentiated) and index tensors.
"""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close, poisoned


def _floats(args: dict) -> dict:
    return {k: v for k, v in args.items() if torch.is_tensor(v) and v.is_floating_point()}


def _leaves(args: dict) -> list[str]:
    return [k for k, v in _floats(args).items() if v.requires_grad]


def check_against_reference(fn, ref_fn, args: dict, backend: str = "triton", reduced: dict | None = None):
    """``fn`` (outputs poisoned first) against ``ref_fn`` run in float64 on the same values: the
    forward and the gradient of every input that requires grad, each with its own dtype's tolerance.

    Args:
        reduced: input name -> how many rows its gradient sums (the reduction tolerance grows with
            it); names not given are copies of gradient rows.
    Returns:
        ``(out, {name: grad})``.
    """
    leaves, reduced = _leaves(args), reduced or {}
    with poisoned():
        out = fn(**args, backend=backend)
        grad = torch.randn_like(out)
        grads = dict(zip(leaves, torch.autograd.grad(out, [args[k] for k in leaves], grad))) if leaves else {}
    ref_args = {k: (v.detach().double().requires_grad_(v.requires_grad) if k in _floats(args) else v)
                for k, v in args.items()}
    ref = ref_fn(**ref_args)
    ref_grads = torch.autograd.grad(ref, [ref_args[k] for k in leaves], grad.double()) if leaves else ()

    want = torch.float32
    for i, v in enumerate(_floats(args).values()):
        want = v.dtype if i == 0 else torch.promote_types(want, v.dtype)
    assert out.dtype == want and out.shape == ref.shape, (out.dtype, want, out.shape, ref.shape)
    assert_close(out, ref, msg="forward")
    for name, ref_grad in zip(leaves, ref_grads):
        g = grads[name]
        assert g.dtype == args[name].dtype and g.shape == args[name].shape, name
        assert_close(g, ref_grad, reduced=reduced.get(name), msg=f"grad of {name}")
    return out, grads


def check_deterministic(fn, args: dict):
    """No atomics: two backward passes of the Triton op give bitwise identical gradients."""
    leaves = [args[k] for k in _leaves(args)]
    out = fn(**args, backend="triton")
    grad = torch.randn_like(out)
    first = torch.autograd.grad(out, leaves, grad, retain_graph=True)
    second = torch.autograd.grad(out, leaves, grad)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def check_gradcheck(kernel_fn, args: dict):
    """``torch.autograd.gradcheck`` of the raw kernel op in float32 (the kernels have no float64).

    The token ops are affine, so central differences are exact up to float32 rounding of O(1)
    outputs (~1e-7 / eps): eps = 0.5 with atol 1e-4 is a real check, not a loose one.
    """
    names = _leaves(args)

    def fn(*leaves):
        return kernel_fn(**{**args, **dict(zip(names, leaves))})

    assert torch.autograd.gradcheck(fn, tuple(args[k] for k in names), eps=0.5, atol=1e-4, rtol=1e-3,
                                    fast_mode=True)


def check_compile_fullgraph(kernel_fn, args: dict):
    """``torch.compile(fullgraph=True)`` traces the op and its backward: same loss and gradients."""
    names = _leaves(args)

    def loss_of(**kw):
        return kernel_fn(**kw).float().square().sum()

    torch._dynamo.reset()
    compiled = torch.compile(loss_of, fullgraph=True, backend="aot_eager")
    loss = compiled(**args)
    grads = torch.autograd.grad(loss, [args[k] for k in names])
    loss_ref = loss_of(**args)
    grads_ref = torch.autograd.grad(loss_ref, [args[k] for k in names])
    assert_close(loss, loss_ref)
    for g, rg in zip(grads, grads_ref):
        assert_close(g, rg)


def check_bad_input(fn, args: dict, change, err: type, name: str):
    """``change(args)`` is refused by ``fn`` with ``err`` whose message starts with the argument's name."""
    with pytest.raises(err, match=rf"^{name}\b"):
        fn(**change(dict(args)), backend="triton")
