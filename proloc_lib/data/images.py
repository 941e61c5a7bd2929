"""The one image loader, used by both profiles and by ``predict``: validated, RGB, with a note of
anything done to the file's pixels beyond decoding.

What the published preprocessing (``Image.open(path).convert("RGB")``) would do silently, and
what this loader does instead, case by case:

* several frames (an animated GIF, a multi-page TIFF): PIL reads the first only. Here all
  frames are decoded; identical frames give the first, with a note; frames that differ are
  refused (which one is the picture is the user's call). A camera's MPO JPEG is the exception:
  its first frame is the primary picture by definition (the others are previews or stereo
  views), used with a note.
* an EXIF orientation tag: PIL ignores it. Here it is applied (the picture as every viewer
  shows it), with a note; HPA's images carry none, so the study's features are unaffected.
* grayscale: copied to R, G and B as PIL does, with a note; an alpha channel is dropped as PIL
  does, with a note; 16-bit and float pixels are scaled, never clipped (``to_rgb8``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

MIN_SIDE = 32
MAX_FRAMES = 64            # frames decoded to compare; a file with more is refused
# Where a conversion note is left on a loaded image (``im.info[CONVERSION_NOTE]``), so callers
# such as ``predict`` can report "16-bit scaled to 8-bit" in their output without a new signature.
CONVERSION_NOTE = "proloc_conversion"
EXIF_ORIENTATION = 0x0112
GRAYSCALE_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
# EXIF orientation tag -> the transpose that shows the picture upright (as ImageOps.exif_transpose)
ORIENTATIONS = {2: (Image.Transpose.FLIP_LEFT_RIGHT, "mirrored"), 3: (Image.Transpose.ROTATE_180, "rotated 180°"),
                4: (Image.Transpose.FLIP_TOP_BOTTOM, "flipped"), 5: (Image.Transpose.TRANSPOSE, "transposed"),
                6: (Image.Transpose.ROTATE_270, "rotated 90° clockwise"),
                7: (Image.Transpose.TRANSVERSE, "transversed"),
                8: (Image.Transpose.ROTATE_90, "rotated 90° counter-clockwise")}


class BadImageError(ValueError):
    """A file that is not a decodable image of usable size."""


def load_image(path: str | Path, min_side: int = MIN_SIDE, *, draft: tuple[int, int] | None = None) -> Image.Image:
    """Open, fully decode and convert to RGB (grayscale, CMYK, palette, RGBA all accepted).

    16-bit and float images are scaled to 8 bits (``to_rgb8``), never clipped; this and every
    other change (the cases in the module docstring) is noted in ``im.info[CONVERSION_NOTE]``
    ("; "-joined). Raises BadImageError naming the file for anything else: an HTML error page
    saved as .jpg, a truncated download, a decompression bomb (more pixels than
    ``PIL.Image.MAX_IMAGE_PIXELS``: refused before decoding), an image too small to hold a
    16-pixel patch, frames that differ.

    ``draft=(w, h)``: JPEG draft decoding, libjpeg scales by 1/2, 1/4 or 1/8 while decoding,
    to the smallest such size that is still at least ``w`` x ``h`` (several times faster on
    3000-pixel IHC images; other formats ignore it). ``min_side`` applies to the original size.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            original = im.size
            frames = getattr(im, "n_frames", 1)
            if frames > 1 and im.format != "MPO":
                out, notes = _same_frames(im, frames, path)
            else:
                notes = [f"MPO file: its primary picture used (frame 1 of {frames})"] if frames > 1 else []
                _check_pixels(im, im.size[0] * im.size[1])
                if draft is not None and im.format in ("JPEG", "MPO"):
                    im.draft("RGB", tuple(int(v) for v in draft))
                im.load()  # decode now: a truncated file fails here, not later in a batch
                out, note = to_rgb8(im)
                notes += [note] if note else []
            mode_note = _mode_note(im.mode)
            if mode_note:
                notes.append(mode_note)
            orientation = im.getexif().get(EXIF_ORIENTATION)
            if orientation in ORIENTATIONS:
                out = out.transpose(ORIENTATIONS[orientation][0])
                notes.append(f"EXIF orientation {orientation} applied ({ORIENTATIONS[orientation][1]}: the picture "
                             "as viewers show it)")
    except FileNotFoundError:
        raise BadImageError(f"image not found: {path}") from None
    except Image.DecompressionBombError as exc:
        raise BadImageError(f"image {path} refused as a possible decompression bomb: "
                            f"{' '.join(str(exc).split())}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, BadImageError):
            raise
        raise BadImageError(f"unreadable image {path}: {exc}") from None
    if notes:
        out.info[CONVERSION_NOTE] = "; ".join(notes)
    if min(original) < min_side:
        raise BadImageError(f"image {path} is {original[0]}x{original[1]}, smaller than {min_side} px")
    return out


def _check_pixels(im: Image.Image, pixels: int) -> None:
    """PIL refuses more than twice MAX_IMAGE_PIXELS itself and only warns above it: refuse those
    too, from the header, before decoding (no warnings filter: thread-safe)."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit and pixels > limit:
        raise Image.DecompressionBombError(f"{im.size[0]}x{im.size[1]} = {pixels} pixels"
                                           + (" over all frames" if pixels != im.size[0] * im.size[1] else "")
                                           + f", over the limit of {limit}")


def _same_frames(im: Image.Image, frames: int, path: Path) -> tuple[Image.Image, list[str]]:
    """The first frame when every frame holds the same picture; BadImageError when they differ."""
    kind = "pages" if im.format == "TIFF" else "frames"
    if frames > MAX_FRAMES:
        raise BadImageError(f"image {path} has {frames} {kind} (at most {MAX_FRAMES} are read); an IHC image "
                            "is one picture: save the one to use as its own file")
    first, pixels = None, 0
    for i in range(frames):
        im.seek(i)
        pixels += im.size[0] * im.size[1]
        _check_pixels(im, pixels)
        im.load()
        rgb, note = to_rgb8(im)
        if first is None:
            first, first_note = rgb, note
        elif rgb.size != first.size or not np.array_equal(np.asarray(rgb), np.asarray(first)):
            raise BadImageError(f"image {path} has {frames} {kind} that differ ({kind[:-1]} {i + 1} is not "
                                f"{kind[:-1]} 1); the published preprocessing would use the first without a word: "
                                "save the picture to use as its own file")
    im.seek(0)
    return first, [f"{frames} identical {kind}: the first used"] + ([first_note] if first_note else [])


def _mode_note(mode: str) -> str | None:
    if mode in GRAYSCALE_MODES:
        return f"grayscale ({mode}) copied to R, G and B"
    if mode in ("RGBA", "RGBa", "PA"):
        return f"alpha channel of {mode} dropped"
    if mode == "CMYK":
        return "CMYK converted to RGB"
    return None


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
