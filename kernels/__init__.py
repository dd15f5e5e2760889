"""Fused Triton kernels for MAE, installed as ``fastmae.kernels`` (the source is the top-level
``kernels/`` folder; ``setup.py`` maps it).

One module per op, named like the op: ``@triton.jit`` kernel(s) -> launcher(s) -> a torch custom op
with a fake (meta) implementation and a registered autograd formula, so ``torch.compile(fullgraph=True)``
traces through it, and the function ``fastmae.ops`` calls::

    fastmae.kernels.patchify.patchify_gather(imgs, ids_keep, patch_size)

The functions expect the checks of ``fastmae.ops`` to have run (shapes, dtypes, devices,
contiguity); call ``fastmae.ops`` rather than these directly unless you validate yourself. This
package uses relative imports only. Modules load on first use, so ``import fastmae.kernels`` does not
import Triton.
"""

import importlib

# one module per op (patchify also holds unpatchify and patchify_gather)
KERNEL_MODULES = ("patchify", "encoder_input", "decoder_input", "masked_tokens", "masked_mse_loss", "masking_ids",
                  "resized_crop")

__all__ = list(KERNEL_MODULES) + ["KERNEL_MODULES"]


def __getattr__(name):
    # The import system then binds the module as an attribute of this package: later lookups are
    # plain attribute reads (which torch.compile traces without a graph break).
    if name not in KERNEL_MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return importlib.import_module(f".{name}", __name__)
