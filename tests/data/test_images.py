"""The image loader: every mode converted to RGB, junk refused with the file named."""
import numpy as np
import pytest
from PIL import Image, ImageOps

from proloc_lib.core.paths import reference_dir
from proloc_lib.data.images import (
    CONVERSION_NOTE,
    MAX_FRAMES,
    BadImageError,
    load_image,
)


def test_image_loader_converts_modes_and_rejects_junk(tmp_path):
    for mode in ("L", "CMYK", "RGBA", "P"):
        p = tmp_path / f"{mode}.{'jpg' if mode in ('L', 'CMYK') else 'png'}"
        Image.new(mode, (64, 48)).save(p)
        im = load_image(p)
        assert im.mode == "RGB" and im.size == (64, 48)
    html = tmp_path / "error.jpg"
    html.write_text("<html><body>503 Service Unavailable</body></html>")
    with pytest.raises(BadImageError, match="error.jpg"):
        load_image(html)
    good = tmp_path / "good.jpg"
    Image.new("RGB", (200, 200), (200, 100, 50)).save(good)
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(good.read_bytes()[:300])
    with pytest.raises(BadImageError, match="trunc.jpg"):
        load_image(trunc)
    small = tmp_path / "small.png"
    Image.new("RGB", (8, 8)).save(small)
    with pytest.raises(BadImageError, match="smaller"):
        load_image(small)


# -- frames, EXIF orientation, grayscale: used with a note or refused ------------------------------
def _picture(seed: int = 0, size=(80, 64)) -> Image.Image:
    """An RGB picture with no symmetry (rotations and flips all differ)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    a[:8, :8] = 255  # a marked corner
    return Image.fromarray(a)


def test_plain_rgb_has_no_note(tmp_path):
    _picture().save(tmp_path / "a.png")
    im = load_image(tmp_path / "a.png")
    assert im.mode == "RGB" and CONVERSION_NOTE not in im.info
    assert np.array_equal(np.asarray(im), np.asarray(_picture()))


def test_frames_that_differ_are_refused(tmp_path):
    black, pic = Image.new("RGB", (80, 64)), _picture()
    # an animated GIF whose first frame is black: PIL alone would read black without a word
    black.save(tmp_path / "a.gif", save_all=True, append_images=[pic])
    with pytest.raises(BadImageError, match=r"a\.gif has 2 frames that differ \(frame 2 is not frame 1\)"):
        load_image(tmp_path / "a.gif")
    black.save(tmp_path / "b.tif", save_all=True, append_images=[pic])
    with pytest.raises(BadImageError, match=r"b\.tif has 2 pages that differ"):
        load_image(tmp_path / "b.tif")


def test_identical_frames_give_the_first_with_a_note(tmp_path):
    pic = _picture()
    pic.save(tmp_path / "same.tif", save_all=True, append_images=[pic.copy(), pic.copy()])
    im = load_image(tmp_path / "same.tif")
    assert np.array_equal(np.asarray(im), np.asarray(pic))
    assert im.info[CONVERSION_NOTE] == "3 identical pages: the first used"


def test_too_many_frames_are_refused(tmp_path):
    pic = _picture(size=(40, 40))
    pic.save(tmp_path / "many.tif", save_all=True, append_images=[pic] * MAX_FRAMES)
    with pytest.raises(BadImageError, match=f"has {MAX_FRAMES + 1} pages"):
        load_image(tmp_path / "many.tif")


def test_a_cameras_mpo_uses_its_primary_picture(tmp_path):
    pic, preview = _picture(1), _picture(2)
    pic.save(tmp_path / "photo.jpg", format="MPO", save_all=True, append_images=[preview], quality=95)
    im = load_image(tmp_path / "photo.jpg")
    with Image.open(tmp_path / "photo.jpg") as raw:
        assert raw.format == "MPO" and raw.n_frames == 2
        first = np.asarray(raw.convert("RGB"))
    assert np.array_equal(np.asarray(im), first)
    assert im.info[CONVERSION_NOTE] == "MPO file: its primary picture used (frame 1 of 2)"


@pytest.mark.parametrize("orientation, upright", [
    (3, lambda a: a[::-1, ::-1]),                 # stored upside down
    (6, lambda a: np.rot90(a, k=-1)),             # stored rotated: shown turned 90° clockwise
    (8, lambda a: np.rot90(a, k=1)),
    (2, lambda a: a[:, ::-1]),
])
def test_exif_orientation_is_applied_and_noted(tmp_path, orientation, upright):
    pic = _picture()
    exif = Image.Exif()
    exif[0x0112] = orientation
    pic.save(tmp_path / "o.png", exif=exif)
    im = load_image(tmp_path / "o.png")
    assert np.array_equal(np.asarray(im), upright(np.asarray(pic)))
    with Image.open(tmp_path / "o.png") as raw:   # what PIL's own helper shows
        assert np.array_equal(np.asarray(im), np.asarray(ImageOps.exif_transpose(raw).convert("RGB")))
    assert im.info[CONVERSION_NOTE].startswith(f"EXIF orientation {orientation} applied (")


def test_grayscale_is_copied_to_three_channels_with_a_note(tmp_path):
    gray = np.asarray(_picture().convert("L"))
    Image.fromarray(gray).save(tmp_path / "g.png")
    im = load_image(tmp_path / "g.png")
    a = np.asarray(im)
    assert im.mode == "RGB" and all(np.array_equal(a[..., c], gray) for c in range(3))
    assert im.info[CONVERSION_NOTE] == "grayscale (L) copied to R, G and B"
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    note = load_image(tmp_path / "g16.png").info[CONVERSION_NOTE]
    assert note.startswith("16-bit values scaled to 8 bits") and "grayscale (I;16) copied to R, G and B" in note


def test_alpha_is_dropped_with_a_note(tmp_path):
    pic = _picture().convert("RGBA")
    pic.save(tmp_path / "a.png")
    im = load_image(tmp_path / "a.png")
    assert np.array_equal(np.asarray(im), np.asarray(_picture()))
    assert im.info[CONVERSION_NOTE] == "alpha channel of RGBA dropped"


def test_the_real_hpa_image_needs_no_note():
    path = reference_dir() / "hpa_ihc_sample.jpg"
    if not path.exists():
        pytest.skip("reference image not found")
    im = load_image(path, draft=(224, 224))
    assert im.mode == "RGB" and CONVERSION_NOTE not in im.info and min(im.size) >= 224
