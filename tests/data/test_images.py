"""The image loader: every mode converted to RGB, junk refused with the file named."""
import pytest
from PIL import Image

from proloc_lib.data.images import BadImageError, load_image


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
