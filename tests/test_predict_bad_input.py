"""Bad inputs to predict and checkpoints (issue 14): one case per kind, each asserting the message
and that nothing was lost or overwritten. The other commands' cases live beside this file
(test_bad_input_data.py: audit; test_bad_input_store.py: extract / merge)."""
import contextlib
import io
import json
import os
import shutil
import stat
import zlib

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import proloc_lib.predict as predict_mod
from proloc_lib.cli import predict
from proloc_lib.core.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, UserError
from proloc_lib.core.manifest import stage_output
from proloc_lib.data.images import CONVERSION_NOTE, BadImageError, load_image
from proloc_lib.data.labels import LABELS
from proloc_lib.data.synthetic import write_protein_images
from proloc_lib.features.encoders import load_image_encoder, load_sequence_encoder
from proloc_lib.profiles.loader import load_profile
from proloc_lib.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointMismatchError,
    read_config,
)
from proloc_lib.training.model import FusionConfig, FusionModel

MAX_RESIDUES = 60
SEQ = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"
LONG = ("MADQLTEEQIAEFKEAFSLFDKDGDGTITTKELGTVMRSLGQNPTEAELQDMINEVDADGNGTIDFPEFLTMMARKMKD" * 2)  # 158 residues
PROB = [f"prob_{predict_mod._col(lab)}" for lab in LABELS]


# -- fixtures ----------------------------------------------------------------------------------
def _checkpoint(out, seq_enc, img_enc, emb, *, labels=LABELS, long_policy="truncate"):
    torch.manual_seed(0)
    model = FusionModel(FusionConfig(seq_dim=seq_enc.hidden_size, img_dim=img_enc.hidden_size,
                                     n_labels=len(labels), d_model=16, n_heads=2, n_blocks=1, dropout=0.0))
    with torch.no_grad():
        model.head.weight.mul_(8.0)
    enc = {"sequence": emb["sequence"], "image": emb["image"], "max_residues": MAX_RESIDUES,
           "long_policy": long_policy}
    return Checkpoint(
        model=model.eval(), run_id="fusion.corrected", labels=list(labels), label_map="hpa_to_proloc5@v2",
        thresholds=[0.5] * len(labels), training={}, config_hash="test", encoders=enc,
        sequence_encoder=dict(seq_enc.fingerprint(), max_residues=MAX_RESIDUES, long_policy=long_policy),
        image_encoder=img_enc.fingerprint(),
        provenance={"synthetic_images": True, "random_weight_encoders": True}).save(out)


def _png_claiming_size(src: bytes, width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height pixels (a decompression bomb's signature)."""
    b = bytearray(src)
    assert b[12:16] == b"IHDR"
    b[16:20], b[20:24] = width.to_bytes(4, "big"), height.to_bytes(4, "big")
    b[29:33] = zlib.crc32(bytes(b[12:29])).to_bytes(4, "big")
    return bytes(b)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(root / "cache"))
        emb = load_profile("smoke")["embeddings"]
        seq_enc = load_sequence_encoder(emb["sequence"], device="cpu")
        img_enc = load_image_encoder(emb["image"], device="cpu")
        ckpt = _checkpoint(root / "ckpt", seq_enc, img_enc, emb)
        images = root / "images"
        src = write_protein_images("SRC", [1, 0, 0, 1, 0], root / "src", 2, 0, size=96)
        gray8 = np.asarray(Image.open(src[0]).convert("L"))
        (images / "G8").mkdir(parents=True)
        Image.fromarray(gray8).save(images / "G8" / "a.png")                           # 8-bit reference
        (images / "G16").mkdir()
        Image.fromarray(gray8.astype(np.uint16) * 257).save(images / "G16" / "a.png")  # 16-bit PNG
        Image.fromarray(gray8.astype(np.uint16) * 257).save(images / "G16" / "b.tif")  # 16-bit TIFF
        (images / "GF").mkdir()
        Image.fromarray(gray8.astype(np.float32) / 255).save(images / "GF" / "a.tif")  # float TIFF in [0, 1]
        (images / "WHITE").mkdir()
        Image.fromarray(np.full_like(gray8, 255)).save(images / "WHITE" / "a.png")     # what clipping gave
        png = (images / "G8" / "a.png").read_bytes()
        (images / "BOMB_1.png").write_bytes(_png_claiming_size(png, 20000, 20000))    # > 2x MAX_IMAGE_PIXELS
        shutil.copy(src[1], images / "MIX_good.jpg")
        (images / "MIX_bomb.png").write_bytes(_png_claiming_size(png, 10000, 10000))  # warning range
        (images / "MIX_cut.png").write_bytes(png[: len(png) // 2])                    # truncated
        (images / "MIX_empty.jpg").write_bytes(b"")
        (images / "MIX_html.jpg").write_bytes(b"<html>404</html>")
        shutil.copy(src[0], images / "LONG_1.jpg")
        shutil.copy(src[0], images / "ORPHAN_1.jpg")        # no FASTA record has this id
        (images / "G8" / "sub").mkdir()
        shutil.copy(src[0], images / "G8" / "sub" / "deep.jpg")  # outside the images rule
        shutil.copy(src[0], root / "outside.jpg")           # reachable only as '../outside'
        (root / "outside").mkdir()
        shutil.copy(src[0], root / "outside" / "x.jpg")
        ids = ["G8", "G16", "GF", "WHITE", "BOMB", "MIX", "LONG", "../outside", "/etc"]
        fasta = root / "proteins.fasta"
        fasta.write_text("".join(f">{i}\n{LONG if i == 'LONG' else SEQ}\n" for i in ids))
        err = io.StringIO()
        opened = []
        real_load = predict_mod.load_image
        mp.setattr(predict_mod, "load_image", lambda p, *a, **k: (opened.append(p), real_load(p, *a, **k))[1])
        with contextlib.redirect_stderr(err):
            df = predict_mod.predict(ckpt, fasta, images, device="cpu", progress=False)
        yield {"root": root, "emb": emb, "seq_enc": seq_enc, "img_enc": img_enc, "ckpt": ckpt, "images": images,
               "fasta": fasta, "df": df.set_index("protein_id"), "raw": df, "err": err.getvalue(),
               "opened": opened}


def _edit(env, name, fn, src=None):
    dst = env["root"] / name
    shutil.copytree(src or env["ckpt"], dst)
    meta = json.loads((dst / "config.json").read_text())
    fn(meta)
    (dst / "config.json").write_text(json.dumps(meta))
    return dst


def _one_line(err: str) -> str:
    lines = [x for x in err.strip().splitlines() if not x.startswith("warning:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- images ------------------------------------------------------------------------------------
def test_16bit_and_float_images_are_scaled_not_clipped(env):
    df = env["df"]
    g8 = df.loc["G8", PROB].to_numpy(float)
    for pid, n in (("G16", 2), ("GF", 1)):
        assert df.loc[pid, "n_images"] == n and df.loc[pid, "error"] == ""
        # x * 257 (16-bit) and x / 255 (float) come back to the same 8-bit pixels: same probabilities
        np.testing.assert_allclose(df.loc[pid, PROB].to_numpy(float), g8, atol=1e-6)
    assert "16-bit values scaled to 8 bits" in df.loc["G16", "warnings"]
    assert "float values in [0, 1] scaled by 255" in df.loc["GF", "warnings"]
    # the old convert("RGB") made this image white; white gives other probabilities
    assert np.abs(df.loc["WHITE", PROB].to_numpy(float) - g8).max() > 1e-3
    im = load_image(env["images"] / "G16" / "a.png")
    assert (np.asarray(im) == 255).mean() < 0.5 and im.info[CONVERSION_NOTE].startswith("16-bit")
    assert "converted" in env["err"] and "G16" in env["err"]


def test_bombs_and_unreadable_images_are_skipped_per_image(env):
    df = env["df"]
    # MIX: one good image kept, four bad ones skipped, each with its reason; prediction made
    assert df.loc["MIX", "n_images"] == 1 and df.loc["MIX", "n_images_skipped"] == 4
    assert df.loc["MIX", "error"] == "" and df.loc["MIX", PROB].notna().all()
    w = df.loc["MIX", "warnings"]
    assert "MIX_bomb.png refused as a possible decompression bomb" in w
    for name in ("MIX_cut.png", "MIX_empty.jpg", "MIX_html.jpg"):
        assert f"unreadable image {env['images'] / name}" in w
    # BOMB: its only image is a bomb (over twice PIL's limit): no prediction, reason in the row
    assert df.loc["BOMB", "n_images"] == 0 and df.loc["BOMB", PROB].isna().all()
    assert "decompression bomb" in df.loc["BOMB", "warnings"] and "unusable" in df.loc["BOMB", "error"]
    # and every other protein still got its prediction
    for pid in ("G8", "G16", "GF", "WHITE", "LONG"):
        assert df.loc[pid, "error"] == "" and df.loc[pid, PROB].notna().all()
    assert "MIX: skipped" in env["err"] and "BOMB: skipped" in env["err"]
    with pytest.raises(BadImageError, match="decompression bomb"):
        load_image(env["images"] / "BOMB_1.png")


def test_ids_never_reach_outside_the_images_folder(env):
    df = env["df"]
    for pid in ("../outside", "/etc"):
        assert "not a plain file name" in df.loc[pid, "error"] and df.loc[pid, "n_images"] == 0
        assert df.loc[pid, PROB].isna().all()
    root = env["images"].resolve()
    assert env["opened"] and all(root in p.resolve().parents for p in env["opened"])
    assert "'../outside' is not a plain file name" in env["err"]
    assert predict_mod.find_images(env["images"], ["..", "a/b", "../outside"]) == {"..": [], "a/b": [], "../outside": []}


def test_unmatched_images_are_reported(env):
    assert env["raw"].attrs["unmatched_images"] == ["ORPHAN_1.jpg", "G8/sub/deep.jpg"] or \
        sorted(env["raw"].attrs["unmatched_images"]) == ["G8/sub/deep.jpg", "ORPHAN_1.jpg"]
    assert "2 image file(s) in" in env["err"] and "ORPHAN_1.jpg" in env["err"]


def test_truncated_and_windowed_sequences_are_reported(env):
    df = env["df"]
    assert df.loc["LONG", "sequence_use"] == "truncated" and df.loc["G8", "sequence_use"] == "full"
    assert f"sequence of {len(LONG)} residues truncated to its first {MAX_RESIDUES}" in df.loc["LONG", "warnings"]
    assert f"LONG: sequence of {len(LONG)} residues truncated" in env["err"]
    win = _checkpoint(env["root"] / "ckpt_windows", env["seq_enc"], env["img_enc"], env["emb"],
                      long_policy="windows")
    fasta = env["root"] / "long.fasta"
    fasta.write_text(f">LONG\n{LONG}\n")
    df = predict_mod.predict(win, fasta, env["images"], device="cpu", progress=False)
    assert df.loc[0, "sequence_use"] == "windows" and "overlapping windows of 60" in df.loc[0, "warnings"]


# -- --out and the command line ----------------------------------------------------------------
def _args(env, out, **over):
    a = {"--checkpoint": env["ckpt"], "--fasta": env["fasta"], "--images": env["images"], "--out": out,
         "--device": "cpu"}
    a.update(over)
    return [x for k, v in a.items() if v is not None for x in (k, str(v))] + ["--no-progress"]


def test_bad_out_path_fails_before_any_work(env, tmp_path, capsys, monkeypatch):
    called = []
    monkeypatch.setattr(predict, "predict", lambda *a, **k: called.append(1))
    cases = [(tmp_path, "is a folder"), (tmp_path / "missing" / "p.csv", "does not exist"),
             (env["fasta"], "is the input file")]
    if os.geteuid() == 0:  # root writes anywhere, but not into /proc
        cases.append((f"/proc/p{os.getpid()}.csv", "cannot write in folder"))
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        cases.append((ro / "p.csv", "cannot write in folder"))
    before = env["fasta"].read_bytes()
    for out, msg in cases:
        assert predict.predict_command(_args(env, out)) == EXIT_USAGE
        line = _one_line(capsys.readouterr().err)
        assert line.startswith("proloc predict: --out") and msg in line and str(out) in line
    assert not called and env["fasta"].read_bytes() == before


def test_out_file_untouched_when_predict_fails(env, tmp_path, capsys, monkeypatch):
    out = tmp_path / "pred.csv"
    out.write_text("previous good result\n")
    bad = tmp_path / "bad.fasta"
    bad.write_text(">X\nMK1LV\n")
    assert predict.predict_command(_args(env, out, **{"--fasta": bad})) == EXIT_USAGE
    assert "non-amino-acid" in _one_line(capsys.readouterr().err)
    monkeypatch.setattr(predict, "predict", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert predict.predict_command(_args(env, out)) == EXIT_INTERRUPTED
    assert "interrupted" in capsys.readouterr().err
    assert out.read_text() == "previous good result\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


@pytest.mark.parametrize("kind", ["missing_ckpt", "ckpt_is_file", "fasta_missing", "fasta_utf16", "fasta_dir",
                                  "fasta_empty", "images_missing", "images_is_file", "batch_zero", "device",
                                  "garbage_weights", "labels_option"])
def test_bad_arguments_and_files_give_one_line(env, tmp_path, capsys, kind):
    over, expect = {}, ""
    if kind == "missing_ckpt":
        over, expect = {"--checkpoint": tmp_path / "nope"}, "nope not found"
    elif kind == "ckpt_is_file":
        over, expect = {"--checkpoint": env["fasta"]}, "is not a folder"
    elif kind == "fasta_missing":
        over, expect = {"--fasta": tmp_path / "x.fasta"}, "x.fasta not found"
    elif kind == "fasta_utf16":
        f = tmp_path / "u.fasta"
        f.write_bytes(">P1\nMKTAYIAK\n".encode("utf-16"))
        over, expect = {"--fasta": f}, "u.fasta is not a text FASTA file"
    elif kind == "fasta_dir":
        over, expect = {"--fasta": tmp_path}, "is not a file"
    elif kind == "fasta_empty":
        f = tmp_path / "e.fasta"
        f.write_text("")
        over, expect = {"--fasta": f}, "e.fasta: no FASTA records"
    elif kind == "images_is_file":
        over, expect = {"--images": env["fasta"]}, "proteins.fasta is not a folder"
    elif kind == "labels_option":
        over, expect = {"--labels": "nucleus,cytoplasm"}, "differ from the expected ['nucleus', 'cytoplasm']"
    elif kind == "images_missing":
        over, expect = {"--images": tmp_path / "imgs"}, "imgs not found"
    elif kind == "batch_zero":
        over, expect = {"--batch-size": 0}, "--batch-size must be >= 1"
    elif kind == "device":
        over, expect = {"--device": "tpu"}, "unknown device 'tpu'"
    elif kind == "garbage_weights":
        ck = tmp_path / "ck"
        shutil.copytree(env["ckpt"], ck)
        (ck / "model.safetensors").write_bytes(b"\x00\x01garbage" * 10)
        over, expect = {"--checkpoint": ck}, "model.safetensors is not a readable safetensors file"
    out = tmp_path / "pred.csv"
    assert predict.predict_command(_args(env, out, **over)) == EXIT_USAGE
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("proloc predict: ") and expect in line
    assert not out.exists()


def test_debug_shows_the_traceback(env, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        predict.predict_command(_args(env, tmp_path / "p.csv", **{"--checkpoint": tmp_path / "nope"}) + ["--debug"])


def test_no_protein_predicted_exits_1_and_keeps_the_rows(env, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "pred.csv"
    assert predict.predict_command(_args(env, out, **{"--images": empty})) == EXIT_FAILED
    assert len(pd.read_csv(out)) == 9 and "9 of 9 protein(s) not predicted" in capsys.readouterr().err


# -- checkpoints -------------------------------------------------------------------------------
def test_labels_must_match_names_and_order(env):
    swapped = LABELS[1:] + LABELS[:1]
    reordered = _edit(env, "ck_reorder", lambda m: m.update(labels=swapped))
    # the weights record the label order they were trained with: an edited config.json is caught
    with pytest.raises(CheckpointMismatchError, match="trained with"):
        Checkpoint.load(reordered)
    # and a caller that expects the project's labels is told the order differs
    with pytest.raises(CheckpointMismatchError, match="another order"):
        predict_mod.predict(reordered, env["fasta"], env["images"], device="cpu", progress=False)
    renamed = _edit(env, "ck_rename", lambda m: m.update(labels=["cytosol", *LABELS[1:]]))
    with pytest.raises(CheckpointMismatchError, match=r"missing \['cytoplasm'\], unexpected \['cytosol'\]"):
        read_config(renamed, labels=LABELS)
    with pytest.raises(CheckpointMismatchError, match="trained with"):
        Checkpoint.load(renamed)
    # older checkpoints (no label record in the weights) are still checked against the caller
    model = Checkpoint.load(env["ckpt"]).model
    legacy = _legacy_checkpoint(model, env["root"] / "ck_legacy", json.loads((env["ckpt"] / "config.json").read_text()))
    legacy_swapped = _edit(env, "ck_legacy_swapped", lambda m: m.update(labels=swapped), src=legacy)
    with pytest.raises(CheckpointMismatchError, match="another order"):
        Checkpoint.load(legacy_swapped, labels=LABELS)
    # n_labels in the model config must agree with the labels
    short = _edit(env, "ck_short", lambda m: m.update(labels=LABELS[:4]))
    with pytest.raises(CheckpointMismatchError, match="5 distinct names"):
        Checkpoint.load(short)
    assert Checkpoint.load(env["ckpt"], labels=LABELS).labels == LABELS


def _legacy_checkpoint(model, out, meta):
    """A checkpoint as the first releases wrote it: weights without a label record + config.json."""
    from safetensors.torch import save_file
    out.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({**meta, "model": model.cfg.to_dict()}))
    return out


@pytest.mark.parametrize("edit,match", [
    (lambda m: m["encoders"]["image"]["overrides"].update(checkpoint_path="/tmp/evil.pth"),
     r"\['checkpoint_path'\] not allowed in 'encoders.image.overrides'"),
    (lambda m: m["encoders"]["image"]["overrides"].update(pretrained_cfg_overlay={"file": "/tmp/x"}),
     "not allowed in 'encoders.image.overrides'"),
    (lambda m: m["encoders"]["image"].update(model="local-dir:/tmp/evil"), "is not a model id"),
    (lambda m: m["encoders"]["image"].update(model="hf-hub:someone/evil"), "is not a model id"),
    (lambda m: m["encoders"]["sequence"].update(model="../evil", pretrained=True), "is not a model id"),
    (lambda m: m["encoders"]["sequence"].update(model="/abs/model", pretrained=True), "is not a model id"),
    (lambda m: m["encoders"]["sequence"]["config"].update(feed_forward_proj="/tmp/x"), "may not name files"),
    (lambda m: m["encoders"]["image"].update(cache_dir="/tmp"), r"\['cache_dir'\] not allowed"),
    (lambda m: m["encoders"].update(weights_file="/tmp/x"), r"\['weights_file'\] not allowed in 'encoders'"),
])
def test_checkpoint_config_may_not_name_files(env, tmp_path, monkeypatch, edit, match):
    import timm
    import transformers

    def refuse(*a, **k):
        raise AssertionError("a model was created from a refused checkpoint config")

    monkeypatch.setattr(timm, "create_model", refuse)
    monkeypatch.setattr(transformers.T5EncoderModel, "from_pretrained", refuse)
    bad = _edit(env, tmp_path / "ck", edit)
    with pytest.raises(CheckpointError, match=match):
        predict_mod.predict(bad, env["fasta"], env["images"], device="cpu", progress=False)
    with pytest.raises(CheckpointError, match=match):
        Checkpoint.load(bad)
    assert issubclass(CheckpointError, UserError)


# -- permissions -------------------------------------------------------------------------------
@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_files_are_written_with_the_users_umask(env, tmp_path, capsys, umask, file_mode, dir_mode):
    from safetensors.torch import save_file

    old = os.umask(umask)
    try:
        ck = Checkpoint.load(env["ckpt"]).save(tmp_path / "ck")
        final = tmp_path / "stage"
        with stage_output(final, "test", {}) as (tmp, extra):
            save_file({"x": torch.zeros(2)}, str(tmp / "shard.safetensors"))  # safetensors: 0600
            (tmp / "sub").mkdir()
            (tmp / "sub" / "t.csv").write_text("a\n")
        out = tmp_path / "pred.csv"
        assert predict.predict_command(_args(env, out)) == 0
    finally:
        os.umask(old)
    capsys.readouterr()
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    for f in (ck / "model.safetensors", ck / "config.json", final / "shard.safetensors", final / "manifest.json",
              final / "sub" / "t.csv", out):
        assert mode(f) == file_mode, (f, oct(mode(f)))
    for d in (ck, final, final / "sub"):
        assert mode(d) == dir_mode, (d, oct(mode(d)))


@pytest.mark.parametrize("edit,match", [
    (lambda m: m["model"].update(d_model=-16), r"d_model=-16.*positive integers"),
    (lambda m: m["model"].update(n_heads="2"), "bad 'model' config"),
    (lambda m: m["model"].update(n_blocks=3), "does not fit the model in config.json"),
    (lambda m: m.update(thresholds=[0.5, 0.5, "x", 0.5, 0.5]), "'thresholds' must be 5 numbers in"),
    (lambda m: m["encoders"].update(long_policy="chop"), "long_policy must be 'truncate' or 'windows'"),
])
def test_malformed_checkpoint_config_is_named(env, tmp_path, edit, match):
    bad = _edit(env, tmp_path / "ck", edit)
    with pytest.raises(CheckpointError, match=match) as info:
        Checkpoint.load(bad)
    assert str(bad / "config.json") in str(info.value) or str(bad / "model.safetensors") in str(info.value)
    (bad / "config.json").write_bytes(b"\xff\xfe{\x00")
    with pytest.raises(CheckpointError, match="config.json is not UTF-8 text"):
        Checkpoint.load(bad)


def test_corrupt_manifest_is_named(tmp_path):
    from proloc_lib.core.manifest import ManifestError, read_manifest

    (tmp_path / "manifest.json").write_text('{"stage": ')
    with pytest.raises(ManifestError, match=r"manifest.json is not a valid manifest.*rerun the stage"):
        read_manifest(tmp_path)
    assert issubclass(ManifestError, UserError)


def test_argument_errors_are_one_line(env, tmp_path, capsys):
    for argv, expect in ((["--fasta", "x"], "the following arguments are required: --checkpoint"),
                         (_args(env, tmp_path / "p.csv", **{"--batch-size": "abc"}), "invalid int value: 'abc'")):
        assert predict.predict_command(argv) == EXIT_USAGE
        assert expect in _one_line(capsys.readouterr().err)


def test_encoder_option_values_are_plain(tmp_path):
    from proloc_lib.training.checkpoint import check_encoder_config

    ok = {"model": "vit_base_patch16_224.orig_in21k", "pretrained": True}
    check_encoder_config("image", ok, tmp_path / "config.json")
    for bad, match in (({**ok, "model": "vit_base_patch16_224/../../x"}, "is not a model id"),
                       ({**ok, "pretrained": "/tmp/weights.pth"}, "may not name files")):
        with pytest.raises(CheckpointError, match=match):
            check_encoder_config("image", bad, tmp_path / "config.json")
