"""What `proloc predict` writes: rounded probabilities, thresholds and the call rule beside them,
every column documented, and a warning for images unlike the checkpoint's training images."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import proloc_lib.predict as predict_mod
from proloc_lib.cli.main import main as proloc
from proloc_lib.data.images import image_statistics, summarize_image_statistics
from proloc_lib.data.labels import LABELS
from proloc_lib.data.synthetic import write_protein_images
from proloc_lib.features.encoders import load_image_encoder, load_sequence_encoder
from proloc_lib.profiles.loader import load_profile
from proloc_lib.training.checkpoint import Checkpoint
from proloc_lib.training.model import FusionConfig, FusionModel

SEQS = {"P1": "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "P2": "MSDNELAPLLRWAELQGKLSGTPEEFLSVLSAQDGHKRLLW"}
THRESHOLDS = [0.3, 0.5, 0.5, 0.7, 0.5]
COLS = [predict_mod._col(lab) for lab in LABELS]


def _checkpoint(out, emb, seq_enc, img_enc, *, training_images=None, training=None):
    torch.manual_seed(0)
    model = FusionModel(FusionConfig(seq_dim=seq_enc.hidden_size, img_dim=img_enc.hidden_size, n_labels=len(LABELS),
                                     d_model=16, n_heads=2, n_blocks=1, dropout=0.0))
    return Checkpoint(model=model.eval(), run_id="fusion.corrected", labels=LABELS, label_map="hpa_to_proloc5@v1",
                      thresholds=THRESHOLDS, training=training or {"thresholds": "tuned"}, config_hash="abc",
                      encoders={"sequence": emb["sequence"], "image": emb["image"], "max_residues": 100,
                                "long_policy": "truncate"},
                      sequence_encoder=dict(seq_enc.fingerprint(), max_residues=100, long_policy="truncate"),
                      image_encoder=img_enc.fingerprint(), provenance={"synthetic_images": True},
                      training_images=training_images or {}).save(out)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict_out")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(root / "cache"))
        emb = load_profile("smoke")["embeddings"]
        seq_enc, img_enc = load_sequence_encoder(emb["sequence"], device="cpu"), load_image_encoder(emb["image"],
                                                                                                   device="cpu")
        images = root / "images"
        paths = [p for pid in SEQS for p in write_protein_images(pid, [1, 0, 0, 1, 0], images / pid, 2, 0, size=96)]
        stats = summarize_image_statistics(paths)
        fasta = root / "p.fasta"
        fasta.write_text("".join(f">{k}\n{v}\n" for k, v in SEQS.items()))
        yield {"root": root, "emb": emb, "seq_enc": seq_enc, "img_enc": img_enc, "images": images, "fasta": fasta,
               "stats": stats,
               "ckpt": _checkpoint(root / "ckpt", emb, seq_enc, img_enc, training_images=stats),
               "old_ckpt": _checkpoint(root / "old", emb, seq_enc, img_enc)}


def _run(env, ckpt, images, out, capsys):
    rc = proloc(["predict", "--checkpoint", str(ckpt), "--fasta", str(env["fasta"]), "--images", str(images),
                 "--out", str(out), "--device", "cpu", "--no-progress"])
    return rc, capsys.readouterr().err


def test_csv_has_rounded_probabilities_and_thresholds_and_a_description_beside_it(env, tmp_path, capsys):
    out = tmp_path / "pred.csv"
    rc, err = _run(env, env["ckpt"], env["images"], out, capsys)
    assert rc == 0 and f"{out}.json" in err
    lines = out.read_text().splitlines()
    header = lines[0].split(",")
    probs = [header.index(f"prob_{c}") for c in COLS]
    for line in lines[1:]:
        for i in probs:
            value = line.split(",")[i]
            assert len(value.partition(".")[2]) <= 4, value      # not 0.5123456789012345
    csv = pd.read_csv(out, keep_default_na=False)
    exact = predict_mod.predict(env["ckpt"], env["fasta"], env["images"], device="cpu", progress=False)
    np.testing.assert_allclose(csv[[f"prob_{c}" for c in COLS]], exact[[f"prob_{c}" for c in COLS]], atol=5e-5)
    for c, t in zip(COLS, THRESHOLDS):
        assert (csv[f"threshold_{c}"] == t).all()
    desc = json.loads((tmp_path / "pred.csv.json").read_text())
    assert desc["labels"] == LABELS and list(desc["thresholds"].values()) == THRESHOLDS
    assert list(desc["thresholds"]) == LABELS and desc["call_rule"] == "prob >= threshold"
    assert desc["probability_decimals"] == 4 and desc["checkpoint"]["run_id"] == "fusion.corrected"
    assert desc["checkpoint"]["training_images"]["median_side_px"] == 96
    # every column of the CSV is documented (in <out>.json and the --help epilog alike)
    documented = set(desc["columns"])
    for col in header:
        generic = next((f"{p}_<label>" for p in ("prob", "call", "threshold") if col.startswith(p + "_")), col)
        assert generic in documented, col
    # calls follow the stated rule on the unrounded probabilities
    for c, t in zip(COLS, THRESHOLDS):
        assert ((exact[f"prob_{c}"] >= t).astype(int) == csv[f"call_{c}"]).all()


def test_help_epilog_documents_every_column(capsys):
    with pytest.raises(SystemExit):
        proloc(["predict", "--help"])
    text = capsys.readouterr().out
    for name in predict_mod.OUTPUT_COLUMNS:
        assert f"  {name} " in text, name
    assert "prob > threshold" in text and "<out>.json" in text


def test_fixed_thresholds_call_strictly_above_as_the_published_code():
    rows = [{"protein_id": "A", "n_images": 1, "n_images_skipped": 0, "sequence_use": "full", "warnings": "",
             "_prob": np.full(5, 0.5)}]
    at = np.full(5, 0.5)
    assert predict_mod._frame(rows, LABELS, at, None)["predicted"].iloc[0] == ";".join(LABELS)
    assert predict_mod._frame(rows, LABELS, at, None, strict=True)["predicted"].iloc[0] == ""
    assert predict_mod.call_rule({"training": {"thresholds": "fixed"}}) == "prob > threshold"
    assert predict_mod.call_rule({"training": {"thresholds": "tuned"}}) == "prob >= threshold"
    assert predict_mod.call_rule({}) == "prob >= threshold"      # older checkpoints: as they were called


def test_image_shift_rule():
    training = {"median_side_px": 256, "mean_intensity_min": 120.0, "mean_intensity_max": 180.0}
    assert predict_mod.image_shift({"side_px": 256, "mean_intensity": 150.0}, training) == []
    assert predict_mod.image_shift({"side_px": 500, "mean_intensity": 200.0}, training) == []   # within 2x, 25.5
    side = predict_mod.image_shift({"side_px": 3200, "mean_intensity": 150.0}, training)
    assert len(side) == 1 and "3200 px" in side[0] and "256 px" in side[0]
    assert len(predict_mod.image_shift({"side_px": 100, "mean_intensity": 150.0}, training)) == 1
    dark = predict_mod.image_shift({"side_px": 256, "mean_intensity": 60.0}, training)
    assert len(dark) == 1 and "mean intensity 60" in dark[0]
    assert predict_mod.image_shift({"side_px": 3200, "mean_intensity": 0.0}, {}) == []      # nothing recorded


def test_a_real_hpa_image_against_small_synthetic_training_images_warns(env, tmp_path, capsys, reference_dir):
    images = tmp_path / "images"
    shutil.copytree(env["images"], images)
    shutil.copy(reference_dir / "hpa_ihc_sample.jpg", images / "P1" / "hpa.jpg")   # 3200 px among 96-px tiles
    out = tmp_path / "pred.csv"
    rc, err = _run(env, env["ckpt"], images, out, capsys)
    assert rc == 0
    csv = pd.read_csv(out, keep_default_na=False).set_index("protein_id")
    assert "hpa.jpg unlike the training images" in csv.loc["P1", "warnings"] and "3200 px" in csv.loc["P1", "warnings"]
    assert "unlike" not in csv.loc["P2", "warnings"]
    assert "P1: 1 of 3 image(s) unlike the checkpoint's training images" in err and "P2:" not in err
    assert image_statistics(reference_dir / "hpa_ihc_sample.jpg")["side_px"] == 3200


def test_synthetic_inputs_like_training_do_not_warn_and_old_checkpoints_get_a_note(env, tmp_path, capsys):
    rc, err = _run(env, env["ckpt"], env["images"], tmp_path / "a.csv", capsys)
    assert rc == 0 and "unlike" not in err and "note:" not in err
    rc, err = _run(env, env["old_ckpt"], env["images"], tmp_path / "b.csv", capsys)
    assert rc == 0 and "note:" in err and "records no statistics of its training images" in err
    assert "warning:" not in err.replace("warning: predictions come from a demo model", "")
    desc = json.loads((tmp_path / "b.csv.json").read_text())
    assert desc["checkpoint"]["training_images"] is None
