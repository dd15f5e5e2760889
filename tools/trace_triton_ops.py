"""Trace the model's fast path with the kernels registered as ``torch.library.triton_op``, on a CPU.

    python -m tools.trace_triton_ops          # prints JSON: the kernels the traced graph launches

Without the Triton interpreter the kernels are ``triton_op``s (``kernels/_common.py``). This traces
the fused ops (``backend="triton"``, forward and backward) on fake CUDA tensors — no GPU needed:
nothing runs — through AOTAutograd's functionalisation, the step where torch.compile hands the graph
to inductor, and reports which Triton kernels appear in the joint graph as
``triton_kernel_wrapper_functional`` nodes (inductor can schedule those), which fastmae ops stay
opaque calls, and for every launch the tensors functionalisation clones before it.

Those clones come from torch's analysis of the kernel's TTIR (``identify_accessed_tensors``): a
tensor argument counts as written when a store's address derives from it. An exact analysis names
only the buffers the op allocated for its outputs, whose clones inductor drops; a kernel it cannot
analyse has every input "written", and each launch then copies its inputs (pred and the images for
the loss: hundreds of MB a step). The analysis asks the active Triton driver for its target; traced
here, Triton is shown an sm_90 target (``triton.runtime.driver.set_active``) so it runs as on an H100.
``tests/test_gpu_readiness.py`` and ``tests/test_compiled_clones.py`` run this in a subprocess (the
test session interprets).
"""

from __future__ import annotations

import os

os.environ.pop("TRITON_INTERPRET", None)  # before the kernels are imported: triton_op, not custom_op

import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402

import contextlib  # noqa: E402

import torch  # noqa: E402
from torch._functorch.aot_autograd import aot_export_module  # noqa: E402
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402

import fastmae  # noqa: E402
from fastmae.kernels import _common  # noqa: E402


class _FastPath(torch.nn.Module):
    """The fused ops of one training step, as the model calls them, and their backward ops called as
    autograd calls them. (The GEMMs and blocks are left out, and the backward is called directly: a
    CPU build of torch cannot functionalise CUDA parameters or tensors that require grad.)"""

    def forward(self, imgs, noise, x_vis, pos, cls, x_dec, mask_token, dec_pos, dec_out, pred, pred_full, mask):
        p = 4
        m = fastmae.ops.masking_ids(noise, noise.shape[1] // 4, backend="triton")
        patches = fastmae.ops.patchify(imgs, p, backend="triton")
        back = fastmae.ops.unpatchify(patches, p, (imgs.shape[2] // p, imgs.shape[3] // p), imgs.shape[1],
                                      backend="triton")
        rows = fastmae.ops.patchify_gather(imgs, m.ids_keep, p, out_dtype=torch.bfloat16, backend="triton")
        tokens = fastmae.ops.encoder_input(x_vis, pos, cls, m.ids_keep, backend="triton")
        dec = fastmae.ops.decoder_input(x_dec, m.ids_restore, mask_token, dec_pos, backend="triton")
        masked = fastmae.ops.masked_tokens(dec_out, m.ids_masked, m.ids_restore, backend="triton")
        loss = fastmae.ops.masked_mse_loss(pred, imgs, None, p, True, ids_masked=m.ids_masked, backend="triton")
        loss_full = fastmae.ops.masked_mse_loss(pred_full, imgs, mask, p, True, backend="triton")
        fastmae_ops = torch.ops.fastmae
        grads = [
            fastmae_ops.patchify_gather_bwd(rows, m.ids_keep, p, 8, 8, imgs.dtype),
            fastmae_ops.encoder_input_bwd(tokens, m.ids_keep, noise.shape[1], False),
            fastmae_ops.encoder_input_bwd(tokens, m.ids_keep, noise.shape[1], True),  # trainable positions
            *fastmae_ops.decoder_input_bwd(dec, m.ids_restore, x_dec.shape[1], x_dec.dtype),
            fastmae_ops.masked_tokens_bwd(masked, m.ids_restore, dec_out.dtype),
            fastmae_ops.masked_mse_loss_bwd(loss, loss, pred, imgs, None, m.ids_masked, p, True),
            fastmae_ops.masked_mse_loss_bwd(loss_full, loss_full, pred_full, imgs, mask, None, p, True),
            patches, back,
        ]
        return (loss + loss_full + sum(g.float().sum() for g in grads),)


class _Sm90Driver:
    """Stands in for Triton's CUDA driver where there is none: the target only (what the analysis asks)."""

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", 90, 32)


@contextlib.contextmanager
def _sm90_target():
    import triton

    config = triton.runtime.driver
    before = config._active  # None until something asked; reset_active() would build the (absent) CUDA driver
    config.set_active(_Sm90Driver())
    try:
        yield
    finally:
        config._active = before


_TRITON_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int64: "i64",
                 torch.int32: "i32", torch.uint8: "u8", torch.bool: "i1"}


def scalars_as_constants(kernel, args: dict) -> str | None:
    """Build ``kernel``'s TTIR with every non-tensor argument a constant, as torch's analysis of a
    kernel's writes did up to torch 2.11 (``args``: tensors, or anything with a ``dtype``, by name):
    ``None`` when it builds, else the error. A scalar argument a kernel uses as a tensor (``x.to``) fails
    there, and the analysis then takes every input as written."""
    import inspect

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend

    while not isinstance(kernel, triton.runtime.JITFunction):  # under @triton.autotune: its first config
        if getattr(kernel, "configs", None):
            args = {**args, **kernel.configs[0].kwargs}
        kernel = kernel.fn
    signature, constants = {}, {}
    for i, name in enumerate(kernel.arg_names):
        value = args[name]
        if hasattr(value, "dtype"):
            signature[name] = "*" + _TRITON_TYPES[value.dtype]
        else:
            signature[name] = "constexpr"
            constants[(i,)] = value
    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    options = backend.parse_options({})
    context = triton._C.libtriton.ir.context()
    triton._C.libtriton.ir.load_dialects(context)
    backend.load_dialects(context)
    src = ASTSource(kernel, signature, constants)
    codegen = backend.get_codegen_implementation(options)
    try:
        if len(inspect.signature(src.make_ir).parameters) == 5:  # Triton >= 3.7 takes the target first
            src.make_ir(target, options, codegen, backend.get_module_map(), context)
        else:
            src.make_ir(options, codegen, backend.get_module_map(), context)
    except Exception as e:  # a CompilationError names the line
        return f"{type(e).__name__}: " + " | ".join(line.strip() for line in str(e).strip().splitlines()[-3:])
    return None


_ALLOCATIONS = ("aten.empty", "aten.full", "aten.zeros", "aten.new_empty", "aten.empty_like")


def _source(node) -> str:
    """What produced graph value ``node``: ``"allocation"`` (a buffer made in the graph), ``"input"``
    (a placeholder) or the producing op's name."""
    if node.op == "placeholder":
        return "input"
    target = str(node.target)
    return "allocation" if target.startswith(_ALLOCATIONS) else target


def trace() -> dict:
    """``{"use_triton_op", "kernels": sorted kernel names in the joint (forward + backward) graph,
    "opaque_ops": fastmae ops left as opaque calls, "launches": one ``{"kernel", "clones": {argument:
    source}, "scalars_as_constants": None or the error}`` per kernel launch (see
    :func:`scalars_as_constants`), "analysis_failures": the analysis' warnings}``."""
    device = torch.device("cuda", 0)
    _common._SM_COUNT[device] = 132  # no GPU to ask; only the persistent grid's size depends on it
    n, num, d, dd, pdim = 2, 64, 64, 32, 48  # mae_vit_micro_patch4 at 32 px, mask 0.75: K = 16, M = 48
    with FakeTensorMode(allow_non_fake_inputs=True):
        def t(*shape, grad=None, dtype=torch.float32):
            return torch.randn(*shape, device=device, dtype=dtype)

        inputs = [t(n, 3, 32, 32, grad=False), torch.rand(n, num, device=device), t(n, 16, d, dtype=torch.bfloat16),
                  t(1, num + 1, d, grad=False), t(1, 1, d), t(n, 17, dd, dtype=torch.bfloat16), t(1, 1, dd),
                  t(1, num + 1, dd, grad=False), t(n, num + 1, dd), t(n, 48, pdim, dtype=torch.bfloat16),
                  t(n, num, pdim, dtype=torch.bfloat16), (torch.rand(n, num, device=device) < 0.75).float()]

    class _Failures(logging.Handler):  # the analysis logs a warning, and assumes every input written
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    failures = _Failures()
    analysis_log = logging.getLogger("torch._higher_order_ops.triton_kernel_wrap")
    analysis_log.addHandler(failures)
    try:
        with warnings.catch_warnings(), _sm90_target():
            warnings.simplefilter("ignore")
            gm, _ = aot_export_module(_FastPath(), inputs, trace_joint=False)
    finally:
        analysis_log.removeHandler(failures)
    kernels, opaque, launches = set(), set(), []
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if "triton_kernel_wrapper" in str(node.target):
            kernel = kernel_side_table.get_kernel(node.kwargs["kernel_idx"])
            name = getattr(kernel, "__name__", None) or kernel.fn.__name__
            kernels.add(name)
            args = node.kwargs["kwargs"]
            values = {**kernel_side_table.get_constant_args(node.kwargs["constant_args_idx"]),
                      **{a: (v.meta["val"] if isinstance(v, torch.fx.Node) else v) for a, v in args.items()}}
            launches.append({"kernel": name, "clones": {a: _source(args[a])
                                                        for a in node.kwargs.get("tensors_to_clone", ())},
                             "scalars_as_constants": scalars_as_constants(kernel, values)})
        elif str(node.target).startswith("fastmae."):
            opaque.add(str(node.target))
    return {"use_triton_op": _common.USE_TRITON_OP, "kernels": sorted(kernels), "opaque_ops": sorted(opaque),
            "launches": launches, "analysis_failures": failures.messages}


if __name__ == "__main__":
    json.dump(trace(), sys.stdout)
    print()
