"""bench-images without the pretrained weights: the same architecture with random weights, and the
profile's own preprocessing (the published resize for full), so decode differences are measured on
the input the profile really feeds."""
from proloc_lib.bench import images as bench_images
from proloc_lib.profiles.loader import load_profile


def test_random_weight_fallback_keeps_the_profiles_preprocessing(monkeypatch):
    calls = []

    def fake_load(cfg, device="cpu"):
        calls.append(dict(cfg))
        if cfg["pretrained"]:
            raise OSError("no weights here")
        return "encoder"

    monkeypatch.setattr(bench_images, "load_image_encoder", fake_load)
    image_cfg = load_profile("full")["embeddings"]["image"]
    enc, weights = bench_images.load_encoder(image_cfg, "cpu")
    assert enc == "encoder" and weights.startswith("random (the real architecture")
    fallback = calls[-1]
    assert fallback == {"model": image_cfg["model"], "pretrained": False, "init_seed": 0,
                        "crop_mode": "squash", "crop_pct": 1.0, "interpolation": "bilinear"}
