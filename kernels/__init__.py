"""Fused Triton kernels for MAE, installed as ``fastmae.kernels``.

One file per op: ``@triton.jit`` kernel(s) -> launcher(s) -> a torch custom op with a fake
(meta) implementation and a registered autograd formula, so ``torch.compile(fullgraph=True)`` traces
through it. The functions exported here expect the checks of ``fastmae.ops`` to have run (shapes,
dtypes, devices, contiguity); call ``fastmae.ops`` rather than these directly unless you validate
yourself. This package uses relative imports only.

Modules load on first use, so ``import fastmae.kernels`` does not import Triton.
"""

import importlib
import sys
import types

# public function -> the module (one per op) that defines it
_EXPORTS = {
    "patchify": "patchify",
    "unpatchify": "patchify",
    "patchify_gather": "patchify",
    "encoder_input": "encoder_input",
    "decoder_input": "decoder_input",
    "masked_mse_loss": "masked_mse_loss",
    "random_masking": "random_masking",
}
KERNEL_MODULES = tuple(dict.fromkeys(_EXPORTS.values()))

__all__ = list(_EXPORTS) + ["KERNEL_MODULES"]


class _Package(types.ModuleType):
    # The import system binds every imported submodule as an attribute of its package
    # (``from fastmae.kernels.patchify import ...`` sets ``fastmae.kernels.patchify``); a module named
    # like the function it exports must not hide that function, so the binding is skipped.
    def __setattr__(self, name, value):
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
