"""The fused Triton kernels, one module per op, imported on first use.

Their source is the repository's top-level ``kernels/`` folder, imported as ``fastmae.kernels`` (a
namespace package: the folder has no ``__init__.py``, so from the repository root it can never shadow
Hugging Face's ``kernels`` package, which transformers imports; ``fastmae/kernels`` is a link to it,
and ``setup.py`` packages it)::

    fastmae.kernels.patchify.patchify_gather(imgs, ids_keep, patch_size)

Each module: ``@triton.jit`` kernel(s) -> launcher(s) -> a torch custom op with a fake (meta)
implementation and a registered autograd formula, so ``torch.compile(fullgraph=True)`` traces through
it. The functions expect the checks of ``fastmae.ops`` to have run (shapes, dtypes, devices,
contiguity); call ``fastmae.ops`` rather than these directly unless you validate yourself. The kernel
modules use relative imports only.
"""

import importlib

# one module per op (patchify also holds unpatchify and patchify_gather)
KERNEL_MODULES = ("patchify", "encoder_input", "decoder_input", "masked_tokens", "masked_mse_loss", "masking_ids",
                  "resized_crop")


class _KernelModules:
    """``kernels.<op>`` imports ``fastmae.kernels.<op>`` (and so Triton) on first use, then keeps it as
    a plain attribute, which torch.compile traces without a graph break."""

    def __getattr__(self, name):
        if name not in KERNEL_MODULES:
            raise AttributeError(f"fastmae.kernels has no kernel module {name!r}; they are {KERNEL_MODULES}")
        module = importlib.import_module(f"fastmae.kernels.{name}")
        setattr(self, name, module)
        return module


kernels = _KernelModules()
