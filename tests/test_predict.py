"""Prediction from a checkpoint: same numbers as the model itself, encoders checked, clear failures."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import proloc_lib.predict as predict_mod
from proloc_lib.cli import predict
from proloc_lib.core.fileio import file_sha256
from proloc_lib.data.images import load_image
from proloc_lib.data.labels import LABELS
from proloc_lib.data.sequences import sequence_hash
from proloc_lib.data.synthetic import write_protein_images
from proloc_lib.features.encoders import load_image_encoder, load_sequence_encoder
from proloc_lib.features.image import extract_images
from proloc_lib.features.sequence import embed_sequence_long, extract_sequences
from proloc_lib.features.store import EmbeddingStore
from proloc_lib.profiles.loader import load_profile
from proloc_lib.training import checkpoint
from proloc_lib.training.checkpoint import Checkpoint
from proloc_lib.training.datasets import FusionDataset, image_samples
from proloc_lib.training.loop import predict_proba
from proloc_lib.training.model import FusionConfig, FusionModel

SEQS = {"P1": "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ",
        "P2": "MSDNELAPLLRWAELQGKLSGTPEEFLSVLSAQDGHKRLLWKAIVDQGRASFVNSL",
        "P3": "MADQLTEEQIAEFKEAFSLFDKDGDGTITTKELGTVMRSLGQNPTEAELQDMINEVDADGNGTIDFPEFLTMMARKMKD"}
MAX_RESIDUES = 60  # P3 is longer: truncation is exercised
THRESHOLDS = [0.0, 1.0, 0.5, 0.0, 1.0]
LAB_COLS = [predict_mod._col(lab) for lab in LABELS]
PROB = [f"prob_{c}" for c in LAB_COLS]
CALL = [f"call_{c}" for c in LAB_COLS]


def _build_checkpoint(out, seq_enc, img_enc, emb, seq_dim=None, thresholds=THRESHOLDS):
    torch.manual_seed(0)
    model = FusionModel(FusionConfig(seq_dim=seq_dim or seq_enc.hidden_size, img_dim=img_enc.hidden_size,
                                     n_labels=len(LABELS), d_model=16, n_heads=2, n_blocks=1, dropout=0.0))
    with torch.no_grad():  # spread the logits so calls at 0.5 are not all alike
        model.head.weight.mul_(8.0)
    encoders = {"sequence": emb["sequence"], "image": emb["image"], "max_residues": MAX_RESIDUES,
                "long_policy": "truncate"}
    # the sequence fingerprint as the feature store records it (with max_residues / long_policy)
    seq_fp = dict(seq_enc.fingerprint(), max_residues=MAX_RESIDUES, long_policy="truncate")
    return Checkpoint(model=model.eval(), run_id="fusion.corrected", labels=LABELS, label_map="hpa_to_proloc5@v1",
                      thresholds=list(thresholds), training={}, config_hash="", encoders=encoders,
                      sequence_encoder=seq_fp, image_encoder=img_enc.fingerprint(),
                      provenance={"real_sequences": False, "synthetic_images": True,
                                  "random_weight_encoders": True}).save(out)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(root / "cache"))  # tiny vocab goes here, not to ~/.cache
        emb = load_profile("smoke")["embeddings"]
        seq_enc = load_sequence_encoder(emb["sequence"], device="cpu")
        img_enc = load_image_encoder(emb["image"], device="cpu")
        ckpt = _build_checkpoint(root / "ckpt", seq_enc, img_enc, emb)
        fasta = root / "proteins.fasta"
        fasta.write_text("".join(f">{k} some description\n{v[:40]}\n{v[40:]}\n" for k, v in SEQS.items()))
        images = root / "images"
        labels = {"P1": [1, 0, 0, 1, 0], "P2": [0, 1, 0, 0, 1], "P3": [0, 0, 1, 0, 0]}
        paths = {"P1": write_protein_images("P1", labels["P1"], images / "P1", 2, 0, size=96),
                 "P2": write_protein_images("P2", labels["P2"], images, 2, 0, size=96),  # flat layout
                 "P3": write_protein_images("P3", labels["P3"], images / "P3", 2, 0, size=96)}
        df = predict_mod.predict(ckpt, fasta, images, device="cpu", progress=False)
        yield {"root": root, "emb": emb, "seq_enc": seq_enc, "img_enc": img_enc, "ckpt": ckpt, "fasta": fasta,
               "images": images, "paths": paths, "labels": labels, "df": df}


def _edit(env, name, fn):
    """Copy of the checkpoint with config.json changed by ``fn(meta)``."""
    dst = env["root"] / name
    shutil.copytree(env["ckpt"], dst)
    meta = json.loads((dst / "config.json").read_text())
    fn(meta)
    (dst / "config.json").write_text(json.dumps(meta))
    return dst


def test_probabilities_equal_direct_computation(env):
    df = env["df"]
    assert list(df["protein_id"]) == list(SEQS) and (df["n_images"] == 2).all() and (df["error"] == "").all()
    assert list(df.columns[:12]) == ["protein_id", "n_images", *PROB, *CALL]
    model = Checkpoint.load(env["ckpt"]).model
    for pid, seq in SEQS.items():
        with torch.no_grad():
            # features pass through the fp16 feature store during training, so round the same way
            s = env["seq_enc"].embed_batch([seq[:MAX_RESIDUES]])[0].half().float()
            im = env["img_enc"].embed_batch([load_image(p) for p in env["paths"][pid]]).half().float()
            probs = torch.sigmoid(model(im, s.expand(len(im), -1, -1), torch.ones(len(im), len(s), dtype=bool)))
        np.testing.assert_allclose(df.loc[df["protein_id"] == pid, PROB].to_numpy()[0],
                                   probs.mean(0).numpy(), rtol=0, atol=1e-5)


def _extract_stores(env, root):
    """The test proteins' sequence and image stores under ``root`` (``seq``, ``img``), as stage 02
    makes them; returns each protein's image files."""
    extract_sequences({sequence_hash(s): s for s in SEQS.values()}, env["seq_enc"], root / "seq",
                      max_residues=MAX_RESIDUES, progress=False)
    files = {pid: [str(p) for p in ps] for pid, ps in env["paths"].items()}
    extract_images({file_sha256(p): p for ps in files.values() for p in ps}, env["img_enc"], root / "img",
                   progress=False)
    return files


def test_probabilities_equal_the_evaluation_path(env):
    """Stores + FusionDataset + predict_proba + per-protein mean give the same numbers."""
    root = env["root"] / "stores"
    files = _extract_stores(env, root)
    seq_store, img_store = EmbeddingStore(root / "seq"), EmbeddingStore(root / "img")
    # what the store recorded is what the checkpoint stores, and predict() accepts
    meta = json.loads((env["ckpt"] / "config.json").read_text())
    predict_mod.compare_fingerprints("sequence", seq_store.meta["fingerprint"], meta["sequence_encoder"])
    images = pd.DataFrame([{"image_id": file_sha256(p), "protein_id": pid} for pid, ps in files.items() for p in ps])
    proteins = pd.DataFrame([{"protein_id": pid, "seq_hash": sequence_hash(s), "split": "test",
                              **dict(zip(LABELS, env["labels"][pid]))} for pid, s in SEQS.items()])
    ds = FusionDataset(image_samples(images, proteins, LABELS), LABELS, seq_store, img_store)
    model = Checkpoint.load(env["ckpt"]).model
    per_image = predict_proba(model, ds)
    expected = pd.DataFrame(per_image).groupby(ds.samples["protein_id"].to_numpy()).mean()
    np.testing.assert_allclose(env["df"].set_index("protein_id").loc[expected.index, PROB].to_numpy(),
                               expected.to_numpy(), rtol=0, atol=1e-5)


def test_a_model_trained_with_the_end_token_row_gets_it_for_new_sequences(env):
    """training.end_token "keep" (authors: the published input): predict embeds each sequence with
    its </s> row last, as the store kept it and the evaluation fed it; older checkpoints (no
    end_token recorded, as in ``env``) get the residues only."""
    ckpt = _edit(env, "ckpt_keep", lambda m: m["training"].update(end_token="keep"))
    df = predict_mod.predict(ckpt, env["fasta"], env["images"], device="cpu", progress=False)
    model = Checkpoint.load(ckpt).model
    for pid, seq in SEQS.items():
        with torch.no_grad():
            s = env["seq_enc"].embed_batch([seq[:MAX_RESIDUES]], end_token=True)[0].half().float()
            assert len(s) == min(len(seq), MAX_RESIDUES) + 1
            im = env["img_enc"].embed_batch([load_image(p) for p in env["paths"][pid]]).half().float()
            probs = torch.sigmoid(model(im, s.expand(len(im), -1, -1), torch.ones(len(im), len(s), dtype=bool)))
        np.testing.assert_allclose(df.loc[df["protein_id"] == pid, PROB].to_numpy()[0],
                                   probs.mean(0).numpy(), rtol=0, atol=1e-5)
    assert not np.allclose(df[PROB].to_numpy(), env["df"][PROB].to_numpy(), atol=1e-4)   # the row counts
    # the evaluation path on a store with end rows, the dataset keeping them, gives the same numbers
    root = env["root"] / "stores-keep"
    files = _extract_stores(env, root)
    images = pd.DataFrame([{"image_id": file_sha256(p), "protein_id": pid} for pid, ps in files.items() for p in ps])
    proteins = pd.DataFrame([{"protein_id": pid, "seq_hash": sequence_hash(s), "split": "test",
                              **dict(zip(LABELS, env["labels"][pid]))} for pid, s in SEQS.items()])
    ds = FusionDataset(image_samples(images, proteins, LABELS), LABELS, EmbeddingStore(root / "seq"),
                       EmbeddingStore(root / "img"), end_token="keep")
    expected = pd.DataFrame(predict_proba(model, ds)).groupby(ds.samples["protein_id"].to_numpy()).mean()
    np.testing.assert_allclose(df.set_index("protein_id").loc[expected.index, PROB].to_numpy(),
                               expected.to_numpy(), rtol=0, atol=1e-5)
    bad = _edit(env, "ckpt_bad_end", lambda m: m["training"].update(end_token="both"))
    with pytest.raises(checkpoint.CheckpointError, match="end_token"):
        predict_mod.predict(bad, env["fasta"], env["images"], device="cpu", progress=False)


def test_windows_policy_embeds_long_sequences_in_windows(env):
    def windows(m):
        m["encoders"].update(long_policy="windows", max_residues=30)
        m["sequence_encoder"].update(long_policy="windows", max_residues=30)
    ckpt = _edit(env, "ckpt_windows", windows)
    df = predict_mod.predict(ckpt, env["fasta"], env["images"], device="cpu", progress=False)
    model = Checkpoint.load(ckpt).model
    with torch.no_grad():
        s = embed_sequence_long(env["seq_enc"], SEQS["P3"], 30).half().float()  # 80 residues, 4 windows
        im = env["img_enc"].embed_batch([load_image(p) for p in env["paths"]["P3"]]).half().float()
        probs = torch.sigmoid(model(im, s.expand(len(im), -1, -1), torch.ones(len(im), len(s), dtype=bool)))
    np.testing.assert_allclose(df[PROB].to_numpy()[2], probs.mean(0).numpy(), rtol=0, atol=1e-5)


def test_checkpoint_round_trip_gives_identical_predictions(env):
    src = env["ckpt"]
    for i in range(2):  # save -> load -> save again -> load
        src = Checkpoint.load(src).save(env["root"] / f"roundtrip{i}")
    again = predict_mod.predict(src, env["fasta"], env["images"], device="cpu", progress=False)
    pd.testing.assert_frame_equal(again, env["df"])


def test_calls_follow_the_checkpoint_thresholds(env):
    df = env["df"]
    probs, calls = df[PROB].to_numpy(), df[CALL].to_numpy(dtype=int)
    np.testing.assert_array_equal(calls, (probs >= np.array(THRESHOLDS)).astype(int))
    assert (calls[:, 0] == 1).all() and (calls[:, 3] == 1).all()  # threshold 0: always called
    assert (calls[:, 1] == 0).all() and (calls[:, 4] == 0).all()  # threshold 1: never (prob < 1)
    for row, c in zip(df["predicted"], calls):
        assert row == ";".join(lab for lab, k in zip(LABELS, c) if k)
    # per-label thresholds at each label's median probability: exactly the upper two proteins called
    median = np.median(probs, axis=0)
    assert len(set(probs[:, 0])) == 3
    moved = _edit(env, "ckpt_median", lambda m: m.update(thresholds=median.tolist()))
    df2 = predict_mod.predict(moved, env["fasta"], env["images"], device="cpu", progress=False)
    np.testing.assert_array_equal(df2[PROB].to_numpy(), probs)
    np.testing.assert_array_equal(df2[CALL].to_numpy(dtype=int), (probs >= median).astype(int))
    assert (df2[CALL].to_numpy(dtype=int).sum(0) == 2).all()


def test_demo_provenance_is_flagged(env, capsys):
    assert env["df"]["provenance"].str.contains("not biologically meaningful").all()
    predict_mod.predict(env["ckpt"], env["fasta"], env["images"], device="cpu", progress=False)
    err = capsys.readouterr().err
    assert "demo model" in err and "random-weight encoders" in err and "synthetic training images" in err


def test_encoder_mismatch_is_refused(env):
    seq = _edit(env, "ckpt_seed", lambda m: m["encoders"]["sequence"].update(init_seed=1))
    with pytest.raises(checkpoint.CheckpointMismatchError, match=r"sequence encoder.*init_seed"):
        predict_mod.predict(seq, env["fasta"], env["images"], device="cpu", progress=False)
    img = _edit(env, "ckpt_img", lambda m: m["encoders"]["image"]["overrides"].update(depth=1))
    with pytest.raises(checkpoint.CheckpointMismatchError, match=r"image encoder.*overrides"):
        predict_mod.predict(img, env["fasta"], env["images"], device="cpu", progress=False)
    policy = _edit(env, "ckpt_policy", lambda m: m["encoders"].update(long_policy="windows"))
    with pytest.raises(checkpoint.CheckpointMismatchError, match="long_policy"):
        predict_mod.predict(policy, env["fasta"], env["images"], device="cpu", progress=False)


def test_model_dims_must_match_the_encoders(env):
    with pytest.raises(checkpoint.CheckpointMismatchError, match="seq_dim"):  # refused when written, or when read
        bad = _build_checkpoint(env["root"] / "ckpt_dim", env["seq_enc"], env["img_enc"], env["emb"],
                                seq_dim=env["seq_enc"].hidden_size + 1)
        predict_mod.predict(bad, env["fasta"], env["images"], device="cpu", progress=False)
    labels = _edit(env, "ckpt_labels", lambda m: m.update(labels=LABELS[:4]))
    with pytest.raises(checkpoint.CheckpointMismatchError, match="labels"):
        predict_mod.predict(labels, env["fasta"], env["images"], device="cpu", progress=False)


def test_broken_checkpoint_files_are_named(env):
    no_key = _edit(env, "ckpt_nokey", lambda m: m.pop("thresholds"))
    with pytest.raises(checkpoint.CheckpointError, match=r"config\.json.*thresholds"):
        predict_mod.predict(no_key, env["fasta"], env["images"], device="cpu")
    no_enc = _edit(env, "ckpt_noenc", lambda m: m["encoders"].pop("max_residues"))
    with pytest.raises(checkpoint.CheckpointError, match=r"encoders\.max_residues"):
        predict_mod.predict(no_enc, env["fasta"], env["images"], device="cpu")
    no_weights = _edit(env, "ckpt_noweights", lambda m: None)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(checkpoint.CheckpointError, match="model.safetensors"):
        predict_mod.predict(no_weights, env["fasta"], env["images"], device="cpu")


def test_missing_and_corrupt_images(env, capsys):
    images = env["root"] / "images_partial"
    shutil.copytree(env["images"] / "P1", images / "P1")
    for p in env["paths"]["P2"]:
        shutil.copy(p, images / p.name)
    (images / "P1" / "broken.png").write_bytes(b"<html>not an image</html>")
    (images / "P2_2.jpg").write_bytes(b"\xff\xd8\xff truncated")
    df = predict_mod.predict(env["ckpt"], env["fasta"], images, device="cpu", progress=False).set_index("protein_id")
    ref = env["df"].set_index("protein_id")
    for pid in ("P1", "P2"):  # bad files skipped with a warning; the good ones give the same numbers
        assert df.loc[pid, "n_images"] == 2 and df.loc[pid, "error"] == ""
        np.testing.assert_allclose(df.loc[pid, PROB].to_numpy(float), ref.loc[pid, PROB].to_numpy(float), atol=1e-6)
    assert "broken.png" in df.loc["P1", "warnings"] and "P2_2.jpg" in df.loc["P2", "warnings"]
    assert df.loc["P3", "n_images"] == 0 and df.loc["P3", PROB].isna().all() and df.loc["P3", CALL].isna().all()
    assert "image+sequence fusion model: give IHC images for P3 with --images" in df.loc["P3", "error"]
    assert "broken.png" in capsys.readouterr().err
    with pytest.raises(predict_mod.MissingImagesError, match="give IHC images for P1, P2, P3"):
        predict_mod.predict(env["ckpt"], env["fasta"], None, device="cpu")


def test_what_was_done_to_each_image_is_said_in_its_row(env, tmp_path):
    """Several pages, an EXIF orientation, grayscale: the row says what was used, or why not."""
    from PIL import Image

    src = Image.fromarray(np.asarray(load_image(env["paths"]["P1"][0])))   # pixels only, no JPEG info
    images = tmp_path / "images"
    images.mkdir()
    src.save(images / "UP_1.png")
    exif = Image.Exif()
    exif[0x0112] = 6                      # stored turned a quarter left, shown upright
    Image.fromarray(np.rot90(np.asarray(src), k=1)).save(images / "ROT_1.png", exif=exif)
    # a black first page (a copy of src: PIL keeps an image's last save settings)
    Image.new("RGB", src.size).save(images / "PAGES_1.tif", save_all=True, append_images=[src.copy()])
    src.save(images / "PAGES_2.png")
    src.convert("L").save(images / "GRAY_1.png")
    fasta = tmp_path / "p.fasta"
    fasta.write_text("".join(f">{pid}\n{SEQS['P1']}\n" for pid in ("UP", "ROT", "PAGES", "GRAY")))
    df = predict_mod.predict(env["ckpt"], fasta, images, device="cpu", progress=False).set_index("protein_id")
    assert df.loc["UP", "warnings"] == ""
    np.testing.assert_allclose(df.loc["ROT", PROB].to_numpy(float), df.loc["UP", PROB].to_numpy(float), atol=1e-6)
    assert "converted ROT_1.png: EXIF orientation 6 applied (rotated 90° clockwise" in df.loc["ROT", "warnings"]
    # the two-page TIFF is skipped with its reason; the protein's other image still predicts
    assert df.loc["PAGES", "n_images"] == 1 and df.loc["PAGES", "n_images_skipped"] == 1
    assert "PAGES_1.tif has 2 pages that differ" in df.loc["PAGES", "warnings"]
    np.testing.assert_allclose(df.loc["PAGES", PROB].to_numpy(float), df.loc["UP", PROB].to_numpy(float), atol=1e-6)
    assert "converted GRAY_1.png: grayscale (L) copied to R, G and B" in df.loc["GRAY", "warnings"]


def test_find_images_rule(tmp_path):
    for name in ("A.png", "A_x.jpg", "A_1_y.TIF", "A_1/z.JPEG", "A_1/notes.txt", ".A_h.png", "AB_1.png",
                 "B/sub/deep.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = predict_mod.find_images(tmp_path, ["A", "A_1", "B"])
    assert {k: [p.relative_to(tmp_path).as_posix() for p in v] for k, v in found.items()} == {
        "A": ["A.png", "A_x.jpg"], "A_1": ["A_1/z.JPEG", "A_1_y.TIF"], "B": []}


def test_cli_writes_csv(env, tmp_path, capsys):
    out = tmp_path / "pred.csv"
    args = ["--checkpoint", str(env["ckpt"]), "--fasta", str(env["fasta"]), "--device", "cpu", "--no-progress"]
    assert predict.predict_command(args + ["--images", str(env["images"]), "--out", str(out), "--batch-size", "1"]) == 0
    assert out.read_text().splitlines()[0].startswith("protein_id,n_images,prob_cytoplasm,")
    csv = pd.read_csv(out, keep_default_na=False)
    np.testing.assert_allclose(csv[PROB].to_numpy(float), env["df"][PROB].to_numpy(), atol=5e-5)  # CSV: 4 decimals
    assert list(csv["predicted"]) == list(env["df"]["predicted"])
    capsys.readouterr()
    assert predict.predict_command(args) != 0  # no --images
    assert "image+sequence fusion model: give IHC images for P1, P2, P3 with --images" in capsys.readouterr().err
    assert predict.predict_command(args[:-3] + ["--device", "tpu", "--images", str(env["images"])]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err
    bad = tmp_path / "bad.fasta"
    bad.write_text(">X\nMK1LV\n")
    assert predict.predict_command(["--checkpoint", str(env["ckpt"]), "--fasta", str(bad),
                                    "--images", str(env["images"])]) == 2
    assert "non-amino-acid" in capsys.readouterr().err


def test_cli_fails_when_no_protein_is_predicted(env, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "pred.csv"
    assert predict.predict_command(["--checkpoint", str(env["ckpt"]), "--fasta", str(env["fasta"]),
                                    "--images", str(empty), "--out", str(out), "--device", "cpu",
                                    "--no-progress"]) == 1
    assert len(pd.read_csv(out)) == 3 and "3 of 3 protein(s) not predicted" in capsys.readouterr().err


def test_a_full_disk_while_writing_out_is_one_line_and_keeps_the_old_file(env, tmp_path, capsys, monkeypatch):
    import errno

    out = tmp_path / "pred.csv"
    out.write_text("previous result\n")
    real = pd.DataFrame.to_csv

    def full(self, path=None, *args, **kwargs):
        if path is not None and str(path).startswith(str(tmp_path)):
            with open(path, "w") as fh:
                fh.write("protein_id,n_im")            # half a file, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    rc = predict.predict_command(["--checkpoint", str(env["ckpt"]), "--fasta", str(env["fasta"]), "--images",
                                  str(env["images"]), "--out", str(out), "--device", "cpu", "--no-progress"])
    err = [line for line in capsys.readouterr().err.splitlines()
           if not line.startswith(("warning:", "summary:", "note:"))]
    assert rc == 1 and len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith(f"proloc predict: no space left on the device writing --out {out} (")
    assert out.read_text() == "previous result\n" and sorted(p.name for p in tmp_path.iterdir()) == ["pred.csv"]
