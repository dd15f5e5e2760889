"""The lines that close a pretraining run: the next commands, with this run's paths."""

import os
import shlex

PROBE_DEFAULT_IMAGES = 2048  # fastmae probe's --num-images default: the default run's set


def next_commands(run, images):
    """``fastmae probe``, ``visualize`` and ``export`` of ``run``'s last checkpoint, one line each,
    each ready to paste (``IMAGE.jpg`` stands for the user's own image where the data has none)."""
    ckpt = shlex.quote(run.last_path)
    probe = f"fastmae probe --checkpoint {ckpt}"
    files = getattr(images, "files", None)
    if run.data is None:
        if run.num_images != PROBE_DEFAULT_IMAGES:
            probe += f" --num-images {run.num_images}"
        probe += "    # its encoder against random ones, on the procedural set's 6 labels"
    elif files and getattr(images, "num_classes", 0) >= 2 and all(images.label(i) >= 0 for i in range(len(files))):
        probe += f" --data {shlex.quote(run.data)}    # its encoder against random ones, on your classes"
    else:
        probe += " --data LABELLED_DIR    # one sub-directory of images per class"
    image = shlex.quote(files[0]) if files else "IMAGE.jpg"
    out = shlex.quote(os.path.normpath(run.output_dir) + "-hf")
    return ["next:",
            f"  {probe}",
            f"  fastmae visualize --checkpoint {ckpt} --images {image}    # reconstructions, as the official demo",
            f"  fastmae export --checkpoint {ckpt} --format hf --out {out}"
            "    # for Hugging Face's ViTMAEForPreTraining"]
