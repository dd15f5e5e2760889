"""``OUT/loss.png``: a run's loss curve (``train_loss`` per epoch from ``log.txt``), drawn with Pillow
(no plotting library needed)."""

import json

from PIL import Image, ImageDraw

from fastmae._files import write_file

WIDTH, HEIGHT = 640, 400
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 30, 40  # margins in pixels, for the labels


def read_losses(log_path):
    """``[(epoch, train_loss)]`` from a ``log.txt`` (lines that are not epoch lines are skipped)."""
    points = []
    with open(log_path, encoding="utf-8") as f:
        for line in f:
            try:
                entry = json.loads(line)
                points.append((int(entry["epoch"]), float(entry["train_loss"])))
            except (ValueError, KeyError, TypeError):
                continue
    return points


def draw_loss_curve(points, title):
    """The curve of ``points`` ``[(epoch, loss)]`` as a ``PIL.Image``: axes, the min and max of each,
    one dot per epoch joined by lines."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    x0, y0, x1, y1 = LEFT, TOP, WIDTH - RIGHT, HEIGHT - BOTTOM
    draw.rectangle((x0, y0, x1, y1), outline="black")
    draw.text((x0, 8), title, fill="black")
    if not points:
        return image
    epochs, losses = [p[0] for p in points], [p[1] for p in points]
    e_lo, e_hi = min(epochs), max(max(epochs), min(epochs) + 1)
    l_lo, l_hi = min(losses), max(losses)
    if l_hi == l_lo:
        l_lo, l_hi = l_lo - 0.5, l_hi + 0.5
    xy = [(x0 + (e - e_lo) / (e_hi - e_lo) * (x1 - x0), y1 - (v - l_lo) / (l_hi - l_lo) * (y1 - y0))
          for e, v in points]
    if len(xy) > 1:
        draw.line(xy, fill=(31, 119, 180), width=2)
    for x, y in xy:
        draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(31, 119, 180))
    draw.text((4, y0 - 5), f"{l_hi:.4f}", fill="black")
    draw.text((4, y1 - 5), f"{l_lo:.4f}", fill="black")
    draw.text((x0, y1 + 6), f"epoch {e_lo}", fill="black")
    draw.text((x1 - 60, y1 + 6), f"epoch {e_hi}", fill="black")
    draw.text(((x0 + x1) // 2 - 30, y1 + 20), "train_loss per epoch", fill="black")
    return image


def save_loss_curve(log_path, out_path, title):
    """Draw ``log_path``'s curve into ``out_path`` (PNG, atomically); returns ``out_path``."""
    image = draw_loss_curve(read_losses(log_path), title)
    write_file(out_path, lambda f: image.save(f, format="PNG"))
    return out_path
