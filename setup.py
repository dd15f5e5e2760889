"""Packaging for fastmae.

Two packages: ``fastmae`` (pure PyTorch) and ``fastmae.kernels`` (Triton). The kernels' source is the
top-level ``kernels/`` folder, which has no ``__init__.py``: a regular package there would shadow
Hugging Face's ``kernels`` (which transformers imports) for anything run from the repository root.
``fastmae/kernels`` is a symbolic link to that folder, so ``fastmae.kernels`` is a namespace
subpackage found the same way from a source checkout, an editable install (with or without build
isolation) and a wheel (which holds copies of the files). The kernel modules use relative imports only.
"""

from setuptools import setup

setup(
    name="fastmae",
    version="0.1.0",
    description="Masked Autoencoder pretraining with fused Triton kernels and an exact PyTorch reference",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["fastmae", "fastmae.cli", "fastmae.data", "fastmae.integrations", "fastmae.kernels"],
    install_requires=[
        "torch>=2.6",
        "numpy",
        "pillow",
        # CUDA builds of torch pin one triton release each (torch 2.6 -> 3.2 ... 2.11 -> 3.6,
        # 2.13 -> 3.9); any of them works here, so the range spans them rather than pinning.
        'triton>=3.2,<4; platform_system == "Linux" and platform_machine == "x86_64"',
    ],
    extras_require={
        # pytest 7: pyproject.toml's pythonpath; xdist: tests/ -n auto; ruff: the linter CI runs
        "test": ["pytest>=7", "pytest-benchmark", "pytest-xdist", "hypothesis", "ruff"],
        # fastmae.integrations.hf and the hf export; apply_fastmae patches the ViTMAE of transformers 5.
        "interop": ["transformers>=5", "accelerate"],  # accelerate: transformers' Trainer (README)
        # WebDataset-style tar shards for fastmae.data
        "shards": ["webdataset"],
        # fastmae pretrain --log-dir: TensorBoard scalars (torch.utils.tensorboard writes them)
        "tensorboard": ["tensorboard"],
        # TIFF / GeoTIFF images for fastmae.data (imagecodecs: compressed TIFFs, e.g. deflate, LZW)
        "tiff": ["tifffile", "imagecodecs"],
    },
    entry_points={"console_scripts": ["fastmae=fastmae.cli:main"]},
)
