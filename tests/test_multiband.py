"""Multi-band, 16-bit and float images end to end: sources (.npy, TIFF, 16-bit PNG, grey photographs,
tar shards) -> RaggedBatch -> resized_crop, ``fastmae stats``, and ``fastmae pretrain`` on them.

Files are written by the tests (tifffile writes the TIFFs: skipped without the ``tiff`` extra).
"""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

import fastmae.data as fd
from fastmae.cli import main
from fastmae.reference import resized_crop_ref
from helpers import requires_kernels

try:
    import tifffile
except ImportError:
    tifffile = None

requires_tiff = pytest.mark.skipif(tifffile is None, reason='the tiff extra is missing: pip install -e ".[tiff]"')
ATOL_FP32 = 1e-4  # resized_crop's agreement with its _ref (tests/test_resized_crop.py), normalised units

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def scenes(count, channels=13, dtype="uint16", size=24):
    """``count`` procedural multi-band scenes ``[size, size, channels]``."""
    bands = fd.ProceduralBands(count, size=size, channels=channels, dtype=dtype)
    return [bands.image(i) for i in range(count)]


def write(folder, arrays, kind):
    """Write ``arrays [H, W, C]`` into ``folder`` as ``kind`` files; returns the folder."""
    os.makedirs(folder, exist_ok=True)
    for i, a in enumerate(arrays):
        path = os.path.join(folder, f"img_{i:03d}")
        if kind == "npy_hwc":
            np.save(path + ".npy", a)
        elif kind == "npy_chw":
            np.save(path + ".npy", np.ascontiguousarray(a.transpose(2, 0, 1)))
        elif kind == "tif_interleaved":
            tifffile.imwrite(path + ".tif", a, photometric="minisblack", planarconfig="contig")
        elif kind == "tif_planar_deflate":
            tifffile.imwrite(path + ".tif", np.ascontiguousarray(a.transpose(2, 0, 1)), photometric="minisblack",
                             planarconfig="separate", compression="zlib")
        elif kind == "png16":
            Image.fromarray(a[:, :, 0]).save(path + ".png")
        else:
            raise ValueError(kind)
    return str(folder)


def through_pipeline(source, mean, std, backend):
    """One batch of ``source`` through the loader and resized_crop, and the _ref of the same batch."""
    loader = fd.build_loader(source, 4, 12, seed=0, num_workers=0, vflip_p=0.5)
    batch = next(iter(loader))
    out = fd.to_model_input(batch, mean=mean, std=std, backend=backend)
    ref = resized_crop_ref(batch.data, batch.meta, batch.boxes, batch.flip, batch.size, mean, std,
                           vflip=batch.vflip)
    return batch, out, ref


# every source kind and dtype: (writer kind, channels, dtype)
SOURCES = [
    pytest.param("npy_hwc", 13, "uint16", id="npy-hwc-13xuint16"),
    pytest.param("npy_chw", 13, "float32", id="npy-chw-13xfloat32"),  # channels first by the layout rule
    pytest.param("npy_hwc", 2, "uint8", id="npy-hwc-2xuint8"),
    pytest.param("tif_interleaved", 13, "uint16", id="tif-interleaved-13xuint16", marks=requires_tiff),
    pytest.param("tif_planar_deflate", 4, "float32", id="tif-planar-deflate-4xfloat32", marks=requires_tiff),
    pytest.param("png16", 1, "uint16", id="png-16bit-grey"),
]


@pytest.mark.slow
@pytest.mark.parametrize("backend", [pytest.param("triton", marks=requires_kernels), "torch"])
@pytest.mark.parametrize("kind, channels, dtype", SOURCES)
def test_source_to_batch_to_model_input(tmp_path, kind, channels, dtype, backend):
    arrays = scenes(5, channels, dtype)
    src = fd.ImageFolder(write(tmp_path / "d", arrays, kind))
    assert src.signature == fd.Signature(channels, np.dtype(dtype))
    for i in range(len(src)):  # read back exactly as written, [H, W, C]
        np.testing.assert_array_equal(np.asarray(src.open(i)), arrays[i])
    m = 0.3 if dtype != "float32" else 0.1
    mean, std = [m] * channels, [0.2] * channels
    batch, out, ref = through_pipeline(src, mean, std, backend)
    assert batch.dtype == getattr(torch, dtype) and batch.channels == channels
    assert out.shape == (4, channels, 12, 12)
    assert (out - ref).abs().max().item() <= ATOL_FP32


def test_grey_photographs_with_in_chans_1(tmp_path):
    fd.write_photo_like_jpegs(str(tmp_path / "p"), 4, width=40, height=30)
    src = fd.ImageFolder(str(tmp_path / "p"), channels=1)
    assert src.signature == fd.Signature(1, np.dtype(np.uint8))
    batch, out, ref = through_pipeline(src, [0.45], [0.22], "torch")
    assert batch.channels == 1 and out.shape == (4, 1, 12, 12)
    assert (out - ref).abs().max().item() <= ATOL_FP32
    grey = np.asarray(Image.open(src.files[0]).convert("L"))[:, :, None]
    np.testing.assert_array_equal(np.asarray(src.image(0))[:, :, None], grey)


def test_16bit_png_keeps_its_values(tmp_path):
    # a 0..60000 ramp: read as uint16, never converted to 8-bit RGB (which clips it to white)
    ramp = np.linspace(0, 60000, 32 * 32).astype(np.uint16).reshape(32, 32, 1)
    src = fd.ImageFolder(write(tmp_path / "d", [ramp, ramp], "png16"))
    np.testing.assert_array_equal(src.open(0), ramp)


def _tar(path, members):
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def _npy_bytes(a):
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


@pytest.mark.parametrize("ext", ["npy", pytest.param("tif", marks=requires_tiff)])
def test_arrays_inside_tar_shards(tmp_path, ext):
    pytest.importorskip("webdataset", reason='the shards extra is missing: pip install -e ".[shards]"')
    arrays = scenes(8, 13, "uint16", size=16)

    def encode(a):
        if ext == "npy":
            return _npy_bytes(a)
        buf = io.BytesIO()
        tifffile.imwrite(buf, a, photometric="minisblack", planarconfig="contig")
        return buf.getvalue()
    for s in range(2):
        _tar(tmp_path / f"train-{s:06d}.tar", [(f"k{s}_{i}.{ext}", encode(a)) for i, a in enumerate(arrays[s::2])])
    shards = fd.open_source(str(tmp_path))
    assert shards.signature == fd.Signature(13, np.dtype(np.uint16))
    loader = fd.build_loader(shards, 4, 8, num_workers=0)
    batch = next(iter(loader))
    assert batch.dtype == torch.uint16 and batch.channels == 13
    out = fd.to_model_input(batch, mean=[0.05] * 13, std=[0.02] * 13, backend="torch")
    ref = resized_crop_ref(batch.data, batch.meta, batch.boxes, batch.flip, batch.size, [0.05] * 13, [0.02] * 13)
    assert (out - ref).abs().max().item() <= ATOL_FP32


# --------------------------------------------------------------------------------------------------
# data that cannot be trained on: one line naming the file
# --------------------------------------------------------------------------------------------------


def test_mixed_channels_name_the_first_file_that_differs(tmp_path):
    d = tmp_path / "d"
    write(d, scenes(2, 13), "npy_hwc")
    np.save(d / "img_009.npy", scenes(1, 4)[0])
    with pytest.raises(fd.DataFormatError, match=r"img_009\.npy has 4 channel\(s\) of uint16, but the images "
                       r"before it have 13 channel\(s\) of uint16"):
        fd.ImageFolder(str(d))


def test_mixed_dtypes_and_photographs_with_16bit_pngs(tmp_path):
    d = tmp_path / "d"
    write(d, scenes(2, 1, "uint16"), "png16")
    Image.new("RGB", (8, 8)).save(d / "zz.png")
    with pytest.raises(fd.DataFormatError, match=r"zz\.png has 3 channel\(s\) of uint8"):
        fd.ImageFolder(str(d))


@pytest.mark.parametrize("dtype", ["float64", "int32", "complex64"])
def test_unsupported_dtype_refused_by_name(tmp_path, dtype):
    d = tmp_path / "d"
    d.mkdir()
    np.save(d / "a.npy", np.zeros((8, 8, 2), dtype))
    with pytest.raises(fd.DataFormatError, match=rf"a\.npy: dtype {dtype} is not supported"):
        fd.ImageFolder(str(d))


def test_nan_image_named_and_not_trained_on(tmp_path):
    d = tmp_path / "d"
    arrays = scenes(4, 2, "float32")
    arrays[1][:] = np.nan
    write(d, arrays, "npy_hwc")
    src = fd.ImageFolder(str(d))
    dataset = fd.CropDataset(src, fd.CropSpec((8, 8)), seed=0)
    crop = dataset[(0, 1)]
    assert crop.skipped == 1 and crop.index == 1  # replaced by the next image, its failure named
    with pytest.raises(fd.DataError, match=r"img_001\.npy holds NaN values"):
        fd.load_crop(src.open(1), fd.CropSpec((8, 8)), np.random.default_rng(0), src.files[1])


def test_npy_layout_rule_and_option(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    np.save(d / "a.npy", np.zeros((3, 10, 12), np.uint8))  # first axis smallest: [C, H, W]
    assert fd.read_signature(str(d / "a.npy"))[0].channels == 3
    assert fd.read_signature(str(d / "a.npy"), "hwc") == (fd.Signature(12, np.dtype(np.uint8)), (3, 10))
    np.save(d / "b.npy", np.zeros((4, 4, 4), np.uint8))  # a tie: [H, W, C]
    assert fd.read_signature(str(d / "b.npy"))[1] == (4, 4)


# --------------------------------------------------------------------------------------------------
# the embedded multi-band set and the commands
# --------------------------------------------------------------------------------------------------


def test_procedural_bands_are_deterministic_and_band_dependent():
    a = fd.ProceduralBands(4, size=16, channels=13, dtype="uint16", seed=3)
    b = fd.ProceduralBands(4, size=16, channels=13, dtype="uint16", seed=3)
    x = a.image(2)
    assert x.shape == (16, 16, 13) and x.dtype == np.uint16
    np.testing.assert_array_equal(x, b.image(2))
    per_band = x.reshape(-1, 13).mean(0)
    assert per_band.std() > 0.1 * per_band.mean()  # bands differ (spectra), not copies of one another
    assert 0 <= a.label(2) < a.num_classes


def test_stats_command_matches_numpy(tmp_path, capsys):
    arrays = scenes(6, 3, "uint16")
    d = write(tmp_path / "d", arrays, "npy_chw")
    assert main(["stats", "--data", d, "--num-images", "6"]) == 0
    out, err = capsys.readouterr()
    assert "stats: 6/6 images" in err and out.splitlines()[-1] == f"wrote {d}/fastmae_stats.json"
    stats = json.loads(open(f"{d}/fastmae_stats.json").read())
    pixels = np.concatenate([a.reshape(-1, 3) for a in arrays]).astype(np.float64) / 65535
    np.testing.assert_allclose(stats["mean"], pixels.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["std"], pixels.std(0), rtol=1e-6)
    assert stats["channels"] == 3 and stats["dtype"] == "uint16"


def test_stats_names_a_nan_image(tmp_path, capsys):
    arrays = scenes(3, 2, "float32")
    arrays[2][0, 0, 0] = np.inf
    d = write(tmp_path / "d", arrays, "npy_hwc")
    assert main(["stats", "--data", d]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) > 0 and "img_002.npy holds inf values" in err.splitlines()[-1]


def _pretrain(out, *extra):
    return ["pretrain", "--model", "mae_vit_micro_patch4", "--input-size", "16", "--batch-size", "8",
            "--epochs", "3", "--warmup-epochs", "1", "--backend", "torch", "--device", "cpu", "--print-freq", "100",
            "--output-dir", str(out), *extra]


def _losses(out):
    return [json.loads(line)["train_loss"] for line in (out / "log.txt").read_text().splitlines()]


@requires_tiff
def test_pretrain_on_13_band_uint16_tiffs(tmp_path, capsys):
    d = write(tmp_path / "tifs", scenes(32, 13, "uint16", size=32), "tif_interleaved")
    assert main(["stats", "--data", d]) == 0
    assert main(_pretrain(tmp_path / "run", "--data", d, "--vflip", "--blr", "0.05")) == 0
    out = capsys.readouterr().out
    assert f"per-channel statistics from {d}/fastmae_stats.json" in out
    losses = _losses(tmp_path / "run")
    assert losses[-1] < losses[0]
    ckpt = torch.load(tmp_path / "run" / "checkpoint-last.pth", weights_only=False)
    stats = json.loads(open(f"{d}/fastmae_stats.json").read())
    assert ckpt["args"]["in_chans"] == 13 and ckpt["args"]["vflip"] is True
    assert ckpt["args"]["mean"] == stats["mean"] and ckpt["args"]["std"] == stats["std"]
    assert ckpt["model"]["patch_embed.proj.weight"].shape[1] == 13


def test_pretrain_on_the_embedded_multiband_set(tmp_path, capsys):
    assert main(_pretrain(tmp_path / "run", "--demo", "multiband", "--num-images", "32", "--blr", "0.05")) == 0
    out = capsys.readouterr().out
    assert "computing per-channel statistics" in out
    losses = _losses(tmp_path / "run")
    assert losses[-1] < losses[0]
    assert (tmp_path / "run" / "reconstructions.png").exists()


@pytest.mark.parametrize("extra, message", [
    (["--in-chans", "3"], "--in-chans 3 does not match the data: {d} (4 images) has 2 channel(s) of uint16"),
    (["--mean", "0.5", "--std", "0.1,0.1"], "--mean has 1 value(s), the data has 2 channel(s)"),
    (["--mean", "0.5,0.5"], "--mean and --std go together: give both, or neither"),
    (["--mean", "0.5,0.5", "--std", "0.1,0"], "--std must be positive, got 0.1,0.0"),
])
def test_pretrain_bad_channel_options(tmp_path, capsys, extra, message):
    d = write(tmp_path / "d", scenes(4, 2, "uint16"), "npy_hwc")
    assert main(_pretrain(tmp_path / "run", "--data", d, "--batch-size", "2", *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"fastmae: error: {message.format(d=d)}"


def test_resume_with_other_in_chans_refused(tmp_path, capsys):
    rgb = tmp_path / "rgb"
    assert main(_pretrain(rgb, "--num-images", "16", "--epochs", "1")) == 0
    d = write(tmp_path / "d", scenes(8, 2, "uint16"), "npy_hwc")
    code = main(_pretrain(tmp_path / "run2", "--data", d, "--resume", str(rgb / "checkpoint-last.pth"),
                          "--epochs", "2"))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert err == (f"fastmae: error: {rgb}/checkpoint-last.pth is a model of in_chans 3, but the data has 2 "
                   f"channel(s): start a new run, or resume on data of 3 channel(s)")


@pytest.fixture(scope="module")
def multiband_checkpoint(tmp_path_factory):
    """A 13-band model pretrained for one epoch on the embedded set, with its statistics stored."""
    out = tmp_path_factory.mktemp("mb")
    assert main(_pretrain(out, "--demo", "multiband", "--num-images", "16", "--epochs", "1")) == 0
    return out / "checkpoint-last.pth"


def test_visualize_bands(tmp_path, capsys, multiband_checkpoint):
    images = [str(tmp_path / f"s{i}.npy") for i in range(2)]
    for path, a in zip(images, scenes(2, 13, "uint16", size=40)):
        np.save(path, a)
    code = main(["visualize", "--checkpoint", str(multiband_checkpoint), "--images", *images, "--bands", "3,2,1",
                 "--out", str(tmp_path / "vis"), "--backend", "torch"])
    assert code == 0
    original = np.asarray(Image.open(tmp_path / "vis" / "s0" / "original.png"))
    assert original.shape == (16, 16, 3)
    # each displayed band stretched between its 2nd and 98th percentile: both ends reached
    assert all(original[..., k].min() == 0 and original[..., k].max() == 255 for k in range(3))
    capsys.readouterr()
    assert main(["visualize", "--checkpoint", str(multiband_checkpoint), "--images", images[0], "--bands", "1,2,13",
                 "--out", str(tmp_path / "vis")]) == 2
    assert capsys.readouterr().err.strip() == ("fastmae: error: --bands must be one or three band indices in "
                                               "[0, 12], got '1,2,13'")


def test_hf_export_writes_the_run_statistics(tmp_path, capsys, multiband_checkpoint):
    transformers = pytest.importorskip("transformers",
                                       reason='the interop extra is missing: pip install -e ".[interop]"')
    out = tmp_path / "hf"
    assert main(["export", "--checkpoint", str(multiband_checkpoint), "--format", "hf", "--out", str(out)]) == 0
    args = torch.load(multiband_checkpoint, weights_only=False)["args"]
    processor = transformers.AutoImageProcessor.from_pretrained(str(out))
    assert processor.image_mean == pytest.approx(args["mean"]) and processor.image_std == pytest.approx(args["std"])
    assert len(processor.image_mean) == 13 and processor.rescale_factor == pytest.approx(1 / 65535)
    assert json.loads((out / "config.json").read_text())["num_channels"] == 13


def test_probe_on_multiband_image_folder(tmp_path, capsys, multiband_checkpoint):
    # ImageFolder layout of .npy scenes, one directory per dominant material; normalised with the
    # checkpoint's statistics
    bandset = fd.ProceduralBands(24, size=20, channels=13, dtype="uint16", seed=5)
    for i in range(len(bandset)):
        d = tmp_path / "data" / bandset.classes[bandset.label(i)]
        d.mkdir(parents=True, exist_ok=True)
        np.save(d / f"{i}.npy", bandset.image(i))
    code = main(["probe", "--checkpoint", str(multiband_checkpoint), "--data", str(tmp_path / "data"),
                 "--epochs", "2", "--random-inits", "0", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0 and "pretrained encoder: top-1" in out
