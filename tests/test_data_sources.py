"""fastmae.data sources: the procedural set (pixels unchanged from the CLI's, plus labels) and image folders."""

from __future__ import annotations

import types

import numpy as np
import pytest
from PIL import ImageDraw

import fastmae.cli.data as cli_data
from fastmae.data import DataError, ImageFolder, ProceduralImages, write_photo_like_jpegs


@pytest.mark.parametrize("size, seed", [(64, 0), (37, 5)])  # the demo's 64 px; an odd size, another seed
def test_procedural_images_are_byte_identical_to_the_cli_set(size, seed):
    new, old = ProceduralImages(40, size, seed), cli_data.ProceduralImages(40, size, seed)
    for i in range(40):
        a, b = new.image(i), old.image(i)
        assert a.mode == b.mode == "RGB" and a.size == b.size
        assert a.tobytes() == b.tobytes(), f"image {i} differs"


def _drawn(monkeypatch, index, size=64):
    """Render the CLI's image ``index`` and record what it drew: (has stripes, kind of the first shape)."""
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

    monkeypatch.setattr(cli_data, "np", types.SimpleNamespace(**{**vars(np), "sin": sin}))
    cli_data.ProceduralImages(100, size).image(index)
    monkeypatch.undo()
    return any(sin_arrays), calls[0]


def test_procedural_labels_are_stripes_and_first_shape(monkeypatch):
    # label = 3 * has_stripes + kind of the first shape (0 ellipse, 1 rectangle, 2 triangle), checked
    # against what the CLI's renderer actually draws for the same image
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
