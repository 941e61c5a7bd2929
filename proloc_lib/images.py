"""The one image loader, used by both profiles: validated, RGB, with a content checksum."""
from __future__ import annotations

import hashlib
from pathlib import Path

from PIL import Image, UnidentifiedImageError

MIN_SIDE = 32


class BadImageError(ValueError):
    """A file that is not a decodable image of usable size."""


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def load_image(path: str | Path, min_side: int = MIN_SIDE, *, draft: tuple[int, int] | None = None) -> Image.Image:
    """Open, fully decode and convert to RGB (grayscale, CMYK, palette, RGBA all accepted).

    Raises BadImageError naming the file for anything else: an HTML error page saved as
    .jpg, a truncated download, an image too small to hold a 16-pixel patch.

    ``draft=(w, h)``: JPEG draft decoding, libjpeg scales by 1/2, 1/4 or 1/8 while decoding,
    to the smallest such size that is still at least ``w`` x ``h`` (several times faster on
    3000-pixel IHC images; other formats ignore it). ``min_side`` applies to the original size.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            original = im.size
            if draft is not None and im.format == "JPEG":
                im.draft("RGB", tuple(int(v) for v in draft))
            im.load()  # decode now: a truncated file fails here, not later in a batch
            if im.mode == "CMYK" or im.mode not in ("RGB",):
                im = im.convert("RGB")
            else:
                im = im.copy()
    except FileNotFoundError:
        raise BadImageError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(f"unreadable image {path}: {exc}") from None
    if min(original) < min_side:
        raise BadImageError(f"image {path} is {original[0]}x{original[1]}, smaller than {min_side} px")
    return im
