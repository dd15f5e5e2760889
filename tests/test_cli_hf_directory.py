"""``visualize``, ``probe`` and ``pretrain --resume`` read a Hugging Face ViTMAE directory (fastmae's
own ``export --format hf``, or ``save_pretrained`` of a ``ViTMAEForPreTraining``) as they read the
checkpoint it came from: the same panels, the same probe figures."""

import pytest
import torch
from PIL import Image

import fastmae
from fastmae.cli import main
from hf_helpers import hf_twin, requires_transformers

pytestmark = [pytest.mark.usefixtures("cpu_default_device"), requires_transformers]


def run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def micro_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = fastmae.mae_vit_micro_patch4()
    path = tmp_path / "micro.pth"
    torch.save({"model": model.state_dict(), "args": {"model": "mae_vit_micro_patch4", "input_size": 32}}, path)
    return model, path


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.effect_mandelbrot((40, 40), (-2, -1.5, 1, 1.5), 60).convert("RGB").save(path)
    return path


def _directories(tmp_path, capsys, model, checkpoint):
    """fastmae's export of ``checkpoint`` and a transformers ``save_pretrained`` of the same weights."""
    exported, saved = tmp_path / "exported-hf", tmp_path / "saved-hf"
    code, _, err = run(capsys, ["export", "--checkpoint", str(checkpoint), "--format", "hf", "--out", str(exported)])
    assert code == 0, err
    hf_twin(model).save_pretrained(saved)
    return exported, saved


def _visualize(tmp_path, capsys, checkpoint, photo, name):
    out = tmp_path / name
    code, stdout, err = run(capsys, ["visualize", "--checkpoint", str(checkpoint), "--images", str(photo),
                                     "--out", str(out), "--backend", "torch"])
    assert code == 0, err
    assert stdout == f"wrote 1 x 4 panels under {out} and {out / 'grid.png'}\n"
    return (out / "grid.png").read_bytes()


def test_visualize_reads_an_hf_directory_as_its_checkpoint(tmp_path, capsys, micro_checkpoint, photo):
    model, checkpoint = micro_checkpoint
    exported, saved = _directories(tmp_path, capsys, model, checkpoint)
    expected = _visualize(tmp_path, capsys, checkpoint, photo, "from-pth")
    assert _visualize(tmp_path, capsys, exported, photo, "from-export") == expected
    assert _visualize(tmp_path, capsys, saved, photo, "from-save-pretrained") == expected


@pytest.mark.slow
def test_probe_reads_an_hf_directory_as_its_checkpoint(tmp_path, capsys, micro_checkpoint):
    model, checkpoint = micro_checkpoint
    exported, saved = _directories(tmp_path, capsys, model, checkpoint)
    figures = []
    for path in (checkpoint, exported, saved):
        code, stdout, err = run(capsys, ["probe", "--checkpoint", str(path), "--num-images", "16", "--epochs", "2",
                                         "--random-inits", "0", "--device", "cpu"])
        assert code == 0, err
        figures.append(stdout.splitlines()[1].split(" [")[0])  # top-1 without the seconds
    assert figures[0].startswith("pretrained encoder: top-1 ") and figures == [figures[0]] * 3


def test_pretrain_resumes_from_an_hf_directorys_weights(tmp_path, capsys, micro_checkpoint):
    model, checkpoint = micro_checkpoint
    exported, _ = _directories(tmp_path, capsys, model, checkpoint)
    out = tmp_path / "run"
    code, stdout, err = run(capsys, ["pretrain", "--resume", str(exported), "--model", "mae_vit_micro_patch4",
                                     "--num-images", "8", "--batch-size", "8", "--epochs", "1",
                                     "--warmup-epochs", "0", "--backend", "torch", "--device", "cpu",
                                     "--output-dir", str(out)])
    assert code == 0, err
    assert (f"initialised mae_vit_micro_patch4 from the weights in {exported}; training from epoch 0"
            in stdout.splitlines())


def test_a_directory_that_is_not_an_hf_model_is_one_line(tmp_path, capsys, photo):
    (tmp_path / "empty").mkdir()
    code, stdout, err = run(capsys, ["visualize", "--checkpoint", str(tmp_path / "empty"), "--images", str(photo),
                                     "--out", str(tmp_path / "out")])
    assert code == 2 and stdout == ""
    assert err == (f"fastmae: error: {tmp_path / 'empty'} is a directory, not a checkpoint file; a Hugging Face "
                   "directory holds config.json and one of model.safetensors, model.safetensors.index.json, "
                   "pytorch_model.bin\n")
