"""bench-images: the JSON a GPU or CPU machine reports (keys other tools read), on a small JPEG."""
import json

import numpy as np
from PIL import Image

from proloc_lib.bench import images as bench_images
from proloc_lib.cli import main as cli_main
from proloc_lib.profiles.loader import load_profile


def test_bench_images_reports_rates_parallelism_and_the_draft_difference(tmp_path, capsys):
    rng = np.random.default_rng(0)
    img = tmp_path / "ihc.jpg"
    Image.fromarray(rng.integers(0, 255, (60, 60, 3), dtype=np.uint8)).resize((1200, 1200)).save(img, quality=90)
    out = tmp_path / "bench.json"
    rc = cli_main.main(["bench-images", "--profile", "smoke", "--device", "cpu", "--image", str(img), "--n", "4",
                "--workers", "2", "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res == json.loads(capsys.readouterr().out)
    for key in ("images_per_s", "decode_images_per_s", "decode_images_per_s_1_thread", "decode_full_images_per_s",
                "vit_forward_images_per_s"):
        assert res[key] > 0, key
    assert res["decode_parallelism"] == {"kind": "thread pool", "workers": 2}
    assert res["image_size"] == [1200, 1200] and res["jpeg_draft"] == [248, 248]
    assert res["draft_feature_difference"]["draft_decode_size"] == [300, 300]      # 1/4 of 1200 >= 248
    assert 0 < res["draft_feature_difference"]["max_abs"] < res["draft_feature_difference"]["max_abs_feature"]
    px = res["draft_pixel_difference"]   # grey levels after the encoder's resize, draft against full decode
    assert px["jpeg_draft"]["draft_decode_size"] == [300, 300] and px["half_scale"]["draft_decode_size"] == [600, 600]
    assert 0 <= px["half_scale"]["max_grey_levels"] <= px["jpeg_draft"]["max_grey_levels"] <= 255
    assert res["autocast_feature_difference"] is None                              # CUDA only
    assert res["random_weights"] is True and res["machine"]["device"] == "cpu" and res["autocast"] is None


def test_bench_images_bad_arguments_are_one_line(tmp_path, capsys):
    rc = cli_main.main(["bench-images", "--image", str(tmp_path / "none.jpg"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "sample image not found" in err and "Traceback" not in err
    rc = cli_main.main(["bench-images", "--workers", "0"])
    assert rc == 2 and "decode_workers" in capsys.readouterr().err


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
