"""The one image loader, used by both profiles: validated, RGB, with a content checksum."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

MIN_SIDE = 32
# Where a conversion note is left on a loaded image (``im.info[CONVERSION_NOTE]``), so callers
# such as ``predict`` can report "16-bit scaled to 8-bit" in their output without a new signature.
CONVERSION_NOTE = "proloc_conversion"


class BadImageError(ValueError):
    """A file that is not a decodable image of usable size."""


def load_image(path: str | Path, min_side: int = MIN_SIDE, *, draft: tuple[int, int] | None = None) -> Image.Image:
    """Open, fully decode and convert to RGB (grayscale, CMYK, palette, RGBA all accepted).

    16-bit and float images are scaled to 8 bits (``to_rgb8``), never clipped; the note is left
    in ``im.info[CONVERSION_NOTE]``. Raises BadImageError naming the file for anything else: an
    HTML error page saved as .jpg, a truncated download, a decompression bomb (more pixels than
    ``PIL.Image.MAX_IMAGE_PIXELS``: refused before decoding), an image too small to hold a
    16-pixel patch.

    ``draft=(w, h)``: JPEG draft decoding, libjpeg scales by 1/2, 1/4 or 1/8 while decoding,
    to the smallest such size that is still at least ``w`` x ``h`` (several times faster on
    3000-pixel IHC images; other formats ignore it). ``min_side`` applies to the original size.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            # PIL refuses more than twice MAX_IMAGE_PIXELS itself and only warns above it: refuse
            # those too, from the header, before decoding (no warnings filter: thread-safe)
            limit = Image.MAX_IMAGE_PIXELS
            if limit and im.size[0] * im.size[1] > limit:
                raise Image.DecompressionBombError(f"{im.size[0]}x{im.size[1]} = {im.size[0] * im.size[1]} "
                                                   f"pixels, over the limit of {limit}")
            original = im.size
            if draft is not None and im.format == "JPEG":
                im.draft("RGB", tuple(int(v) for v in draft))
            im.load()  # decode now: a truncated file fails here, not later in a batch
            im, note = to_rgb8(im)
    except FileNotFoundError:
        raise BadImageError(f"image not found: {path}") from None
    except Image.DecompressionBombError as exc:
        raise BadImageError(f"image {path} refused as a possible decompression bomb: "
                            f"{' '.join(str(exc).split())}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(f"unreadable image {path}: {exc}") from None
    if note:
        im.info[CONVERSION_NOTE] = note
    if min(original) < min_side:
        raise BadImageError(f"image {path} is {original[0]}x{original[1]}, smaller than {min_side} px")
    return im


def to_rgb8(im: Image.Image) -> tuple[Image.Image, str | None]:
    """An 8-bit RGB copy of ``im`` and a note saying how its values were scaled (None if not).

    PIL's ``convert("RGB")`` clips 16-bit, 32-bit and float pixels at 255 (a 16-bit IHC image
    becomes white). Here 16-bit values are divided by 257 (0..65535 -> 0..255), floats in
    [0, 1] multiplied by 255, values already in 0..255 kept, anything else min-max scaled.
    """
    if im.mode == "RGB":
        return im.copy(), None
    if not (im.mode.startswith("I") or im.mode == "F"):  # 1, L, P, LA, RGBA, CMYK, YCbCr...: 8-bit
        return im.convert("RGB"), None
    a = np.asarray(im).astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{im.mode} image holds non-finite pixel values")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    bits = "16-bit" if im.mode.startswith("I;16") else ("float" if im.mode == "F" else "32-bit")
    if im.mode == "F" and lo >= 0 and hi <= 1:
        a, how = a * 255.0, f"{bits} values in [0, 1] scaled by 255"
    elif lo >= 0 and hi <= 255 and not im.mode.startswith("I;16"):
        how = f"{bits} values already in 0..255 kept"
    elif lo >= 0 and hi <= 65535:
        a, how = a / 257.0, f"{bits} values scaled to 8 bits (x / 257)"
    else:
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        how = f"{bits} values in [{lo:g}, {hi:g}] min-max scaled to 0..255"
    out = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8)).convert("RGB")  # 2-D uint8: mode L
    return out, how


# -- what images look like: recorded at training, compared at prediction ---------------------------
STATS_DRAFT = (256, 256)    # intensity is measured on a JPEG draft of at least this size (fast, same mean)


def image_statistics(path: str | Path) -> dict:
    """``{"side_px": long side of the file, "mean_intensity": mean grey level 0..255}`` of one image."""
    with Image.open(path) as head:
        side = max(head.size)
    im = load_image(path, draft=STATS_DRAFT)
    return {"side_px": int(side), "mean_intensity": float(np.asarray(im.convert("L"), dtype=np.float64).mean())}


def summarize_image_statistics(paths, *, sample: int = 64, seed: int = 0) -> dict:
    """Size and intensity of a seeded sample of ``paths`` (unreadable files left out): the median
    long side and the range of per-image mean intensities that ``predict`` compares new images with."""
    paths = list(paths)
    rng = np.random.default_rng(seed)
    picked = [paths[i] for i in sorted(rng.choice(len(paths), size=min(sample, len(paths)), replace=False))]
    stats = []
    for p in picked:
        try:
            stats.append(image_statistics(p))
        except (BadImageError, OSError):
            continue
    if not stats:
        return {}
    sides = np.array([s["side_px"] for s in stats])
    means = np.array([s["mean_intensity"] for s in stats])
    return {"n_sampled": len(stats), "median_side_px": int(np.median(sides)), "min_side_px": int(sides.min()),
            "max_side_px": int(sides.max()), "mean_intensity": round(float(means.mean()), 2),
            "mean_intensity_min": round(float(means.min()), 2), "mean_intensity_max": round(float(means.max()), 2)}
