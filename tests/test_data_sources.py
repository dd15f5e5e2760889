"""fastmae.data sources: the procedural set (its pixels held by a hash, and its labels) and image folders."""

from __future__ import annotations

import hashlib
import types

import numpy as np
import pytest
from PIL import ImageDraw

import fastmae.data.sources as sources
from fastmae.data import DataError, ImageFolder, ProceduralImages, write_photo_like_jpegs

# SHA-256 of the first 40 images' RGB bytes, recorded from the set the command line drew before the
# input pipeline moved into fastmae.data (fastmae/cli/data.py, removed since): the images never change.
GOLDEN = {
    (64, 0): "f742193a1a0c167f6d25f32d30485e4d370d14eb845bd560318e20a9e4778dd1",  # the demo's 64 px
    (37, 5): "47d6627d1a93173f524794e7d66c7875ab04af2bcec4c0fac5d91317cbcae58e",  # an odd size, another seed
}


@pytest.mark.parametrize("size, seed", sorted(GOLDEN))
def test_procedural_images_never_change(size, seed):
    images, digest = ProceduralImages(40, size, seed), hashlib.sha256()
    for i in range(40):
        img = images.image(i)
        assert img.mode == "RGB" and img.size == (size, size)
        digest.update(img.tobytes())
    assert digest.hexdigest() == GOLDEN[size, seed]


def _drawn(monkeypatch, index, size=64):
    """Render image ``index`` and record what it drew: (has stripes, kind of the last shape drawn)."""
    calls, sin_arrays = [], []
    for kind, method in enumerate(("ellipse", "rectangle", "polygon")):
        original = getattr(ImageDraw.ImageDraw, method)

        def spy(self, *args, _kind=kind, _original=original, **kwargs):
            calls.append(_kind)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(ImageDraw.ImageDraw, method, spy)

    def sin(x):  # the stripes are the only sine of an image-sized array (the ramp's is of a scalar)
        sin_arrays.append(np.ndim(x) == 2)
        return np.sin(x)

    monkeypatch.setattr(sources, "np", types.SimpleNamespace(**{**vars(np), "sin": sin}))
    ProceduralImages(100, size).image(index)
    monkeypatch.undo()
    return any(sin_arrays), calls[-1]


def test_procedural_labels_are_stripes_and_topmost_shape(monkeypatch):
    # label = 3 * has_stripes + kind of the shape drawn last, on top of the others (0 ellipse,
    # 1 rectangle, 2 triangle), checked against what the renderer actually draws for the same image
    images = ProceduralImages(100, 64)
    for i in range(30):
        stripes, kind = _drawn(monkeypatch, i)
        assert images.label(i) == 3 * stripes + kind, f"image {i}"


def test_procedural_classes():
    images = ProceduralImages(600, 16)
    assert images.num_classes == len(images.classes) == 6
    counts = np.bincount([images.label(i) for i in range(600)], minlength=6)
    # each class has probability 1/6 (stripes 1/2, kind 1/3): Binomial(600, 1/6) has sd 9.1; 5 sd
    assert np.all(np.abs(counts - 100) < 46), counts
    # the label the image carries (what the loader reads) is the same
    assert all(images.image(i).info["label"] == images.label(i) for i in range(20))


def test_image_folder_labels_and_scan(tmp_path):
    write_photo_like_jpegs(str(tmp_path / "cat"), 2, seed=0, width=40, height=30)
    write_photo_like_jpegs(str(tmp_path / "ant" / "deep"), 1, seed=5, width=40, height=30)
    write_photo_like_jpegs(str(tmp_path), 1, seed=9, width=40, height=30)  # directly in root: no class
    (tmp_path / "cat" / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored")
    warnings = []
    folder = ImageFolder(str(tmp_path), warn=warnings.append)
    assert len(folder) == 4 and folder.classes == ("ant", "cat") and folder.num_classes == 2
    assert len(warnings) == 1 and "skipped 1 of 5" in warnings[0]
    labels = {f.split(str(tmp_path))[1]: folder.label(i) for i, f in enumerate(folder.files)}
    assert labels == {"/ant/deep/img_00000.jpg": 0, "/cat/img_00000.jpg": 1, "/cat/img_00001.jpg": 1,
                      "/img_00000.jpg": -1}
    im = folder.open(0)
    assert im.format == "JPEG" and im.size == (40, 30)  # opened, not decoded: a draft is still possible
    assert folder.image(0).mode == "RGB"


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        ImageFolder(str(tmp_path / "missing"))
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="not a directory"):
        ImageFolder(str(tmp_path / "file.jpg"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .jpg/.jpeg/.png"):
        ImageFolder(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="none of the 1 image files"):
        ImageFolder(str(tmp_path))


def test_image_that_fails_to_decode_later_is_a_data_error(tmp_path):
    # passes the scan (header and structure fine) but its data is cut short: decoding fails
    path = write_photo_like_jpegs(str(tmp_path), 1, width=64, height=48)[0]
    data = open(path, "rb").read()
    folder = ImageFolder(str(tmp_path), verify=False)
    open(path, "wb").write(data[: len(data) // 3])
    with pytest.raises(DataError, match="cannot decode image .*img_00000.jpg"):
        folder.image(0)
