"""Bad inputs to predict and its command line: one case per kind, each asserting the message and
that nothing was lost or overwritten. The awkward inputs and the one predict run over them are the
`predict_inputs` fixture (conftest.py); checkpoint cases are in training/test_checkpoint.py."""
import os
import shutil
import stat

import numpy as np
import pandas as pd
import pytest
import torch

import proloc_lib.predict as predict_mod
from proloc_lib.cli import predict
from proloc_lib.core.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE
from proloc_lib.core.manifest import stage_output
from proloc_lib.data.images import CONVERSION_NOTE, BadImageError, load_image
from proloc_lib.data.labels import LABELS
from proloc_lib.training.checkpoint import Checkpoint, CheckpointError

PROB = [f"prob_{predict_mod._col(lab)}" for lab in LABELS]


@pytest.fixture
def env(predict_inputs):
    """This module's name for the shared predict run."""
    return predict_inputs


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
    assert (predict_mod.find_images(env["images"], ["..", "a/b", "../outside"])
            == {"..": [], "a/b": [], "../outside": []})


def test_unmatched_images_are_reported(env):
    assert env["raw"].attrs["unmatched_images"] == ["ORPHAN_1.jpg", "G8/sub/deep.jpg"] or \
        sorted(env["raw"].attrs["unmatched_images"]) == ["G8/sub/deep.jpg", "ORPHAN_1.jpg"]
    assert "2 image file(s) in" in env["err"] and "ORPHAN_1.jpg" in env["err"]


def test_truncated_and_windowed_sequences_are_reported(env):
    df, long, max_residues = env["df"], env["long"], env["max_residues"]
    assert df.loc["LONG", "sequence_use"] == "truncated" and df.loc["G8", "sequence_use"] == "full"
    assert f"sequence of {len(long)} residues truncated to its first {max_residues}" in df.loc["LONG", "warnings"]
    assert f"LONG: sequence of {len(long)} residues truncated" in env["err"]
    win = env["make_checkpoint"](env["root"] / "ckpt_windows", long_policy="windows")
    fasta = env["root"] / "long.fasta"
    fasta.write_text(f">LONG\n{long}\n")
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


def test_argument_errors_are_one_line(env, tmp_path, capsys):
    for argv, expect in ((["--fasta", "x"], "the following arguments are required: --checkpoint"),
                         (_args(env, tmp_path / "p.csv", **{"--batch-size": "abc"}), "invalid int value: 'abc'")):
        assert predict.predict_command(argv) == EXIT_USAGE
        assert expect in _one_line(capsys.readouterr().err)


