"""Image preprocessing as explicit encoder keys: the published resize (224 x 224, bilinear, no crop)."""
import numpy as np
import pytest
import torch
from PIL import Image

from proloc_lib.features import encoders
from proloc_lib.features.store import fingerprint_id
from proloc_lib.profiles import loader as profiles

TINY = {"model": "vit_base_patch16_224", "pretrained": False,
        "overrides": {"embed_dim": 32, "depth": 1, "num_heads": 2}, "init_seed": 0}
PUBLISHED = {"crop_mode": "squash", "crop_pct": 1.0, "interpolation": "bilinear"}


def published_processor(im: Image.Image) -> torch.Tensor:
    """What transformers' ViTImageProcessor does for google/vit-base-patch16-224-in21k (the published
    vit.py): PIL resize to 224 x 224 with BILINEAR, scale to [0, 1], normalize with mean = std = 0.5."""
    x = np.asarray(im.convert("RGB").resize((224, 224), Image.BILINEAR), dtype=np.float32) / 255.0
    return torch.from_numpy((x - 0.5) / 0.5).permute(2, 0, 1)


def _image(w=400, h=250, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def test_published_preprocessing_is_a_plain_resize_without_crop():
    enc = encoders.load_image_encoder({**TINY, **PUBLISHED}, device="cpu")
    im = _image()                                        # not square: a crop would lose the sides
    torch.testing.assert_close(enc.transform(im), published_processor(im), atol=1e-6, rtol=0)
    # the default (timm's crop_pct 0.9, bicubic, center crop) is a different input
    default = encoders.load_image_encoder(TINY, device="cpu")
    assert not torch.allclose(default.transform(im), published_processor(im), atol=0.05)


def test_preprocessing_enters_the_store_fingerprint():
    a = encoders.load_image_encoder({**TINY, **PUBLISHED}, device="cpu").fingerprint()
    b = encoders.load_image_encoder(TINY, device="cpu").fingerprint()
    c = encoders.load_image_encoder({**TINY, **PUBLISHED, "crop_pct": 0.9}, device="cpu").fingerprint()
    assert a["preprocessing"] == {"crop_mode": "squash", "crop_pct": 1.0, "interpolation": "bilinear"}
    assert len({fingerprint_id(a), fingerprint_id(b), fingerprint_id(c)}) == 3   # each its own store


@pytest.mark.parametrize("bad, msg", [({"crop_pct": 1.5}, "crop_pct"), ({"crop_pct": True}, "crop_pct"),
                                      ({"crop_mode": "border"}, "crop_mode"),
                                      ({"interpolation": "nearest"}, "interpolation")])
def test_bad_preprocessing_values_are_named(bad, msg):
    with pytest.raises(ValueError, match=msg):
        encoders.load_image_encoder({**TINY, **bad}, device="cpu")


def test_full_profiles_use_the_published_encoder_and_list_the_variants():
    from pathlib import Path


    for path in sorted((Path(__file__).resolve().parents[1] / "configs").glob("full*.yaml")):
        cfg = profiles.load_profile(path.stem)
        img = cfg["embeddings"]["image"]
        assert img["model"] == "vit_base_patch16_224.orig_in21k", path.name
        assert {k: img[k] for k in PUBLISHED} == PUBLISHED, path.name
        variants = cfg["embeddings"].get("image_variants") or {}
        if path.name == "full-extended.yaml":  # the ablation tier; `full` is the main table only
            assert variants["augreg"]["image"]["model"] == "vit_base_patch16_224.augreg_in21k"
            assert variants["tiles"]["crop_grid"] == 3
