"""Every Python block of README.md runs as written, on the CPU.

Each block runs on its own (a fresh namespace, as a reader who copies only that block), in an empty
directory holding the files the block names, which the test makes (small stand-ins of the right
kind: an official-layout ViT-B checkpoint, a pretraining checkpoint, a folder of images, a
ViTMAE directory for the hub name). The only edits are the device (``"cuda"`` -> ``"cpu"``) and the
hub name (``"facebook/vit-mae-base"`` -> that local directory), and the backend is the torch one, what
``"auto"`` picks on a reader's CPU. The blocks build official-size models (ViT-B: seconds to a minute
on a CPU), hence ``slow``.
"""

import pathlib
import re

import pytest
import torch
from PIL import Image

import fastmae

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```$", README.read_text(encoding="utf-8"), flags=re.S | re.M)
HUB_NAME, HUB_DIR = "facebook/vit-mae-base", "vit-mae-base-standin"

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("cpu_default_device")]


def _block_id(block):
    """``README.md:LINE``, the line of the block's first line of code."""
    text = README.read_text(encoding="utf-8")
    return f"README.md:{text[:text.index(block)].count(chr(10)) + 1}"


def _files(block, root):
    """Make, in ``root``, every file ``block`` reads."""
    if "mae_visualize_vit_base.pth" in block:
        torch.manual_seed(0)
        torch.save({"model": fastmae.mae_vit_base_patch16().state_dict()}, root / "mae_visualize_vit_base.pth")
    if "output/pretrain/checkpoint-last.pth" in block:
        (root / "output" / "pretrain").mkdir(parents=True)
        torch.save({"model": fastmae.mae_vit_micro_patch4().state_dict(), "epoch": 0,
                    "args": {"model": "mae_vit_micro_patch4"}}, root / "output" / "pretrain" / "checkpoint-last.pth")
    if "imagenet/train" in block:
        (root / "imagenet" / "train" / "a").mkdir(parents=True)
        for i in range(8):  # one batch of the block's 8
            Image.new("RGB", (48, 40), (8 * i, 80, 140)).save(root / "imagenet" / "train" / "a" / f"{i}.png")
    if HUB_NAME in block:
        from transformers import ViTMAEConfig, ViTMAEForPreTraining
        config = ViTMAEConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                              decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                              decoder_intermediate_size=32)  # 224 px, 16 px patches, as the hub model
        ViTMAEForPreTraining(config).save_pretrained(root / HUB_DIR)


def _marks(block):
    marks = []
    if "transformers" in block:
        from hf_helpers import HAVE_TRANSFORMERS
        marks.append(pytest.mark.skipif(not HAVE_TRANSFORMERS, reason="needs transformers, the interop extra: "
                                        "pip install -e '.[interop]'"))
    return marks


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("block", [pytest.param(b, id=_block_id(b), marks=_marks(b)) for b in BLOCKS])
def test_readme_block_runs_as_written(block, tmp_path, monkeypatch):
    # What "auto" is on a reader's CPU: the torch backend (this session turns the Triton interpreter on).
    monkeypatch.setenv("FASTMAE_BACKEND", "torch")
    _files(block, tmp_path)
    monkeypatch.chdir(tmp_path)
    code = block.replace('"cuda"', '"cpu"').replace(f'"{HUB_NAME}"', f'"{HUB_DIR}"')
    exec(compile(code, _block_id(block), "exec"), {"__name__": "__readme__"})
