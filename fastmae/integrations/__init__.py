"""fastmae's kernels inside other libraries' models.

``fastmae.integrations.hf``: :func:`~fastmae.integrations.hf.apply_fastmae` patches a Hugging Face
``ViTMAEForPreTraining`` (needs ``transformers``: ``pip install 'fastmae[interop]'``). Importing this
package imports no optional dependency.
"""
