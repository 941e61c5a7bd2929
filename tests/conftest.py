"""What tests of more than one package share: the reference data, the markers' skip rules, a tiny
stage 01, a tiny training profile, a tiny checkpoint with a predict run on awkward inputs, and the
smoke notebooks executed once (notebooks/ and stages/ read them).

Fixtures used by one package only live in that package's own conftest.py. Heavy imports sit
inside the fixtures, so that collecting a single light test file stays quick.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the proloc_lib beside these tests, whatever copy is installed

from proloc_lib.core import paths  # noqa: E402  (after the path above)

# a host whose answer means this machine reaches the public data sources
PUBLIC_SOURCE = "https://zenodo.org"


# -- markers (registered in pyproject.toml) ---------------------------------------------------------
def pytest_addoption(parser):
    parser.addoption("--run-network", action="store_true", default=False,
                     help="also run the tests marked `network` (they need the internet)")


@functools.cache
def _public_sources_answer() -> bool:
    import requests

    try:
        requests.head(PUBLIC_SOURCE, timeout=3)
    except requests.RequestException:
        return False
    return True


def pytest_runtest_setup(item):
    if item.get_closest_marker("network") and not item.config.getoption("--run-network"):
        pytest.skip("needs the internet: run with --run-network")
    # probed once, and only when an offline test is about to run
    if item.get_closest_marker("offline") and _public_sources_answer():
        pytest.skip(f"this machine reaches {PUBLIC_SOURCE}: the offline behaviour cannot be checked here")


# -- reference data (outside the repository; never copied into it) -----------------------------------
@pytest.fixture
def reference_dir() -> Path:
    """The real reference tables (the authors' 566-image test set); skips where they are absent."""
    ref = paths.reference_dir()
    if not (ref / "proloc_ihs_test.csv").exists():
        pytest.skip(f"reference files not found at {ref}")
    return ref


@pytest.fixture
def authors_tables() -> tuple[Path, Path]:
    """The authors' two test tables (``proloc_ihs_test.csv``, ``proloc_ihs_test_img_URL.csv``);
    skips where they are absent."""
    ref = paths.reference_dir()
    tables = ref / "proloc_ihs_test.csv", ref / "proloc_ihs_test_img_URL.csv"
    if not all(t.exists() for t in tables):
        pytest.skip(f"authors' reference tables not found in {ref} (../shared/reference beside the project)")
    return tables


@pytest.fixture
def vislocas_dir() -> Path:
    """The Vislocas benchmark tables, byte for byte; skips where they are absent."""
    vislocas = paths.reference_dir() / "vislocas"
    if not (vislocas / "data_train.csv").exists() or not (vislocas / "data_test.csv").exists():
        pytest.skip(f"Vislocas tables not found in {vislocas}")
    return vislocas


# -- a tiny stage 01 on the smoke profile (extract and notebook 02 read it) ----------------------------
@pytest.fixture
def stage01(tmp_path, monkeypatch):
    """A data root holding smoke/01_data_assembly: 3 proteins, 4 images of distinct sizes."""
    import json

    import pandas as pd
    from PIL import Image

    from proloc_lib.core import manifest
    from proloc_lib.data.sequences import sequence_hash

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "data"
    s1 = root / "smoke" / "01_data_assembly"
    (root / "smoke" / "images").mkdir(parents=True)
    s1.mkdir(parents=True)
    seqs = ["MKTAYIAKQRQISFVKSHFSRQ", "MSDNGPQNQRNAPRITFGGPSD", "MALWMRLLPLLALLALWGPD"]
    proteins = pd.DataFrame({"protein_id": ["P1", "P2", "P3"], "sequence": seqs,
                             "seq_hash": [sequence_hash(s) for s in seqs]})
    rows = []
    for i in range(4):
        p = root / "smoke" / "images" / f"im{i}.jpg"
        Image.new("RGB", (64 + 8 * i, 64), (20 * i, 100, 200)).save(p)
        rows.append({"image_id": f"img{i}", "protein_id": f"P{1 + i % 3}", "path": f"images/im{i}.jpg"})
    proteins.to_parquet(s1 / "proteins.parquet")
    pd.DataFrame(rows).to_parquet(s1 / "images.parquet")
    man = manifest.build_manifest("01_data_assembly", {"profile": "smoke", "seed": 0}, outputs_dir=s1,
                                  extra={"upstream": {}})   # what notebook 02 checks its input against
    (s1 / "manifest.json").write_text(json.dumps(man))
    return root


# -- a tiny training profile (the plan and the stage drivers read it) ----------------------------------
@pytest.fixture(scope="session")
def tiny_profile():
    """Factory: the smoke profile renamed 'tiny', with a small training section (2 seeds, both
    configurations, two ablations, cross-validation, 2 stratified re-splits); keyword arguments
    replace keys of that section."""
    from proloc_lib.profiles.loader import load_profile, profile_from_dict

    def make(**training_over):
        tr = {"seeds": [0, 1], "base": {"d_model": 16, "n_heads": 2, "n_blocks": 1, "max_epochs": 4},
              "configurations": {"corrected": {"lr": 0.01, "batch_size": 8, "patience": None},
                                 "authors": {"max_epochs": 1, "batch_size": 8}},
              "ablation_overrides": {"max_epochs": 1},
              "ablations": {"mask off": {"apply_mask": False}, "augreg": {"image_variant": "augreg"}},
              "cross_validation": {"config": "corrected"},
              "resplits": {"methods": ["stratified"], "repeats": 2}}
        tr.update(training_over)
        smoke = load_profile("smoke")
        return profile_from_dict({**smoke, "profile": "tiny", "training": tr,
                                  "data": {**smoke["data"], "split": {"method": "stratified", "val_fraction": 0.2,
                                                                      "test_fraction": 0.25}},
                                  "provenance": {**smoke["provenance"], "synthetic_images": True,
                                                 "random_weight_encoders": True},
                                  "baselines": {"mlp_hidden": 16, "mlp_epochs": 150, "logreg_C": 1.0,
                                                "light_attention_epochs": 2}}, name="tiny")

    return make


# -- a tiny checkpoint, and one predict run over awkward inputs (predict and checkpoint tests) --------
PREDICT_MAX_RESIDUES = 60
PREDICT_SEQ = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"
PREDICT_LONG = ("MADQLTEEQIAEFKEAFSLFDKDGDGTITTKELGTVMRSLGQNPTEAELQDMINEVDADGNGTIDFPEFLTMMARKMKD" * 2)  # 158


def _tiny_checkpoint(out, seq_enc, img_enc, emb, *, labels=None, long_policy="truncate"):
    import torch

    from proloc_lib.data.labels import LABELS
    from proloc_lib.training.checkpoint import Checkpoint
    from proloc_lib.training.model import FusionConfig, FusionModel

    labels = LABELS if labels is None else labels
    torch.manual_seed(0)
    model = FusionModel(FusionConfig(seq_dim=seq_enc.hidden_size, img_dim=img_enc.hidden_size,
                                     n_labels=len(labels), d_model=16, n_heads=2, n_blocks=1, dropout=0.0))
    with torch.no_grad():
        model.head.weight.mul_(8.0)
    enc = {"sequence": emb["sequence"], "image": emb["image"], "max_residues": PREDICT_MAX_RESIDUES,
           "long_policy": long_policy}
    return Checkpoint(
        model=model.eval(), run_id="fusion.corrected", labels=list(labels), label_map="hpa_to_proloc5@v2",
        thresholds=[0.5] * len(labels), training={}, config_hash="test", encoders=enc,
        sequence_encoder=dict(seq_enc.fingerprint(), max_residues=PREDICT_MAX_RESIDUES, long_policy=long_policy),
        image_encoder=img_enc.fingerprint(),
        provenance={"synthetic_images": True, "random_weight_encoders": True}).save(out)


def _png_claiming_size(src: bytes, width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height pixels (a decompression bomb's signature)."""
    import zlib

    b = bytearray(src)
    assert b[12:16] == b"IHDR"
    b[16:20], b[20:24] = width.to_bytes(4, "big"), height.to_bytes(4, "big")
    b[29:33] = zlib.crc32(bytes(b[12:29])).to_bytes(4, "big")
    return bytes(b)


@pytest.fixture(scope="module")
def predict_inputs(tmp_path_factory):
    """A tiny checkpoint (smoke encoders, random weights) and one `predict` over a folder of awkward
    images (16-bit, float, bombs, truncated, HTML, stray files) and a FASTA with odd ids and a long
    sequence. Keys: root, emb, seq_enc, img_enc, ckpt, images, fasta, df (by protein), raw, err (what
    predict printed), opened (the image paths it opened), make_checkpoint(out, long_policy=...),
    max_residues, long (the long sequence). Built once per test module: XDG_CACHE_HOME (the tiny
    vocabulary) and the spy on predict's image loader stay in place until that module ends."""
    import contextlib
    import io
    import shutil

    import numpy as np
    from PIL import Image

    import proloc_lib.predict as predict_mod
    from proloc_lib.data.synthetic import write_protein_images
    from proloc_lib.features.encoders import load_image_encoder, load_sequence_encoder
    from proloc_lib.profiles.loader import load_profile

    root = tmp_path_factory.mktemp("predict_inputs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(root / "cache"))
        emb = load_profile("smoke")["embeddings"]
        seq_enc = load_sequence_encoder(emb["sequence"], device="cpu")
        img_enc = load_image_encoder(emb["image"], device="cpu")
        ckpt = _tiny_checkpoint(root / "ckpt", seq_enc, img_enc, emb)
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
        fasta.write_text("".join(f">{i}\n{PREDICT_LONG if i == 'LONG' else PREDICT_SEQ}\n" for i in ids))
        err = io.StringIO()
        opened = []
        real_load = predict_mod.load_image
        mp.setattr(predict_mod, "load_image", lambda p, *a, **k: (opened.append(p), real_load(p, *a, **k))[1])
        with contextlib.redirect_stderr(err):
            df = predict_mod.predict(ckpt, fasta, images, device="cpu", progress=False)
        yield {"root": root, "emb": emb, "seq_enc": seq_enc, "img_enc": img_enc, "ckpt": ckpt, "images": images,
               "fasta": fasta, "df": df.set_index("protein_id"), "raw": df, "err": err.getvalue(),
               "opened": opened, "max_residues": PREDICT_MAX_RESIDUES, "long": PREDICT_LONG,
               "make_checkpoint": functools.partial(_tiny_checkpoint, seq_enc=seq_enc, img_enc=img_enc, emb=emb)}


# -- the five notebooks executed once on `smoke` (tests/notebooks, tests/stages) --------------------
@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """Run 01..05 once on `smoke` into a temporary data and figures root, as `proloc run` does.
    Returns (stage folders, figures folder, executed notebooks). That takes minutes: every test
    that reads it is marked slow."""
    from proloc_lib.stages.runner import execute_notebook

    base = tmp_path_factory.mktemp("smoke")
    data_root, fig_root, executed = base / "data", base / "figures", base / "executed"
    executed.mkdir()
    for path in sorted((ROOT / "notebooks").glob("0[1-5]_*.ipynb")):
        params = {"profile": "smoke", "seed": 0, "device": "cpu", "data_root": str(data_root)}
        if path.stem == "05_figures":
            params["figures_root"] = str(fig_root)
        execute_notebook(path, executed / path.name, params, progress=False)
    return data_root / "smoke", fig_root / "smoke", executed
