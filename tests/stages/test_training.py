"""What each configuration trains on: ``authors`` on the whole benchmark train file (train + val,
as the published train.py, which has no validation part), ``corrected`` on train with val held out;
the published per-file padding width; the result rows saying both, and the two test truths.

A tiny benchmark-like stage: train file = 8 train + 4 val proteins, test file = 4 proteins, two
images each; two train proteins share one image (paralogs); sequence lengths are chosen so the
longest of the train file sits in val.
"""
import numpy as np
import pandas as pd
import pytest
import torch

from proloc_lib.evaluation import scoring, tables
from proloc_lib.features.store import EmbeddingStore
from proloc_lib.stages import training
from proloc_lib.stages.common import StageData
from proloc_lib.training import settings
from proloc_lib.training.plan import build_plan

LABELS = ["cytoplasm", "endoplasmic reticulum", "mitochondria", "nucleus", "plasma membrane"]
SPLIT = ["train"] * 8 + ["val"] * 4 + ["test"] * 4
LENGTHS = [5, 6, 7, 8, 9, 10, 11, 12] + [20, 3, 4, 5] + [15, 6, 7, 8]   # train max 12, val 20, test 15


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    rng = np.random.default_rng(0)
    n = len(SPLIT)
    y = (rng.random((n, 5)) < 0.4).astype(int)
    y[np.arange(n), rng.integers(0, 5, n)] = 1
    proteins = pd.DataFrame(y, columns=LABELS).assign(
        protein_id=[f"P{i}" for i in range(n)], seq_hash=[f"h{i}" for i in range(n)], split=SPLIT,
        benchmark_split=["train" if s != "test" else "test" for s in SPLIT])
    rows, tokens = [], {}
    for i in range(n):
        for k in range(2):
            key = "shared" if (i in (0, 1) and k == 1) else f"img{i}_{k}"   # P0 and P1 list one image each
            tokens[key] = torch.randn(4, 8)
            rows.append({"image_id": key, "protein_id": f"P{i}", "split": SPLIT[i], **dict(zip(LABELS, y[i]))})
    images = pd.DataFrame(rows)
    test = images["split"] == "test"
    for lab in LABELS:   # the authors' own test labels: the same, except cytoplasm switched on every test image
        images[scoring.AUTHORS_PREFIX + lab] = np.where(test, images[lab], np.nan)
    images.loc[test, scoring.AUTHORS_PREFIX + "cytoplasm"] = 1 - images.loc[test, "cytoplasm"]
    seq = EmbeddingStore.open(root / "sequences", {"m": "s"}, 6, "sequence")
    seq.commit({f"h{i}": torch.randn(L, 6) for i, L in enumerate(LENGTHS)})
    img = EmbeddingStore.open(root / "images", {"m": "i"}, 8, "image")
    img.commit(tokens)
    return StageData(labels=LABELS, proteins=proteins, images=images, seq_store=seq, img_store=img, data_dir=root,
                     emb_dir=root, data_manifest={"labels": LABELS, "truth": "benchmark_columns"},
                     emb_manifest={}, note="tiny test data")


def test_authors_trains_on_the_whole_train_file_corrected_holds_val_out(data):
    authors, corrected = settings.make_config("authors"), settings.make_config("corrected")
    assert authors.train_on == "train+val" and authors.training_splits == ("train", "val")
    assert corrected.train_on == "train" and corrected.training_splits == ("train",)
    ds = training.fusion_datasets(data, targets="image", train_on=("train+val",))
    assert set(ds) == {"train", "val", "test", "train+val"}
    whole = ds["train+val"].samples
    assert set(whole["protein_id"]) == {f"P{i}" for i in range(12)}                 # the train file
    assert training._job(ds, authors, seed=0).train_ds is ds["train+val"]
    assert training._job(ds, corrected, seed=0).train_ds is ds["train"]
    # counts as the result rows give them: the shared image is one image, trained on under both proteins
    assert training.training_set(ds, authors) == {"train_on": "train+val", "train_proteins": 12,
                                                  "train_images": 23, "train_samples": 24}
    assert training.training_set(ds, corrected) == {"train_on": "train", "train_proteins": 8,
                                                    "train_images": 15, "train_samples": 16}


def test_split_padding_is_the_published_per_file_width(data):
    """The published prott5.py pads each file to its own longest sequence: with train+val, the
    train file's longest (20, a val protein), the test file's (15); not train's alone (12)."""
    authors = settings.make_config("authors")
    ds = training.fusion_datasets(data, train_on=("train+val",))
    assert training._pad_to(authors, ds["train+val"], ds) == 20 == max(LENGTHS[:12])
    assert training._pad_to(authors, ds["test"], ds) == 15 == max(LENGTHS[12:])
    assert training._pad_to(authors, ds["train"], ds) == 12


def test_config_hash_of_every_earlier_configuration_is_unchanged():
    for name in ("authors", "corrected"):
        cfg = settings.make_config(name, train_on="train")
        d = settings.train_config_dict(cfg)
        d.pop("train_on")   # a configuration written before the switch existed
        assert settings.TrainConfig.from_dict(d).hash() == cfg.hash()
    assert settings.make_config("authors").hash() != settings.make_config("authors", train_on="train").hash()
    with pytest.raises(ValueError, match="train_on"):
        settings.make_config("corrected", train_on="everything")


def test_result_rows_say_what_each_run_trained_on_and_score_both_truths(data):
    torch.manual_seed(0)
    plan = build_plan({"seeds": [0], "base": {"d_model": 8, "n_heads": 2, "n_blocks": 1, "max_epochs": 1},
                       "configurations": {"corrected": {"batch_size": 8}, "authors": {"batch_size": 8}},
                       "control": False})
    res = training.run_fusion_plan(data, plan, progress=False)
    m = res.metrics
    trained = m.drop_duplicates("model").set_index("model")[["train_on", "train_proteins", "train_images"]]
    assert trained.loc["fusion.authors"].tolist() == ["train+val", 12, 23]
    assert trained.loc["fusion.corrected"].tolist() == ["train", 8, 15]
    theirs = m[m["truth"] == scoring.TRUTH_AUTHORS]
    assert set(theirs["level"]) == {"image"} and set(theirs["split"]) == {"test"}
    assert set(m.loc[m["truth"] != scoring.TRUTH_AUTHORS, "truth"]) == {"benchmark_columns"}
    # the truths differ only in cytoplasm: every other label scores the same against both
    key = ["model", "label", "metric"]
    ours = m[(m["level"] == "image") & (m["split"] == "test") & (m["truth"] == "benchmark_columns")].set_index(key)
    both = theirs.set_index(key)["value"].to_frame("authors").join(ours["value"])
    other = both[~both.index.get_level_values("label").isin(["cytoplasm", "overall"])]
    other = other[~other.index.get_level_values("metric").isin(["threshold"])]
    pd.testing.assert_series_equal(other["authors"], other["value"], check_names=False)
    cyto = both.xs(("cytoplasm", "prevalence"), level=("label", "metric"))
    assert (cyto["authors"] + cyto["value"]).round(6).eq(1.0).all()   # switched on every test image
    main = tables.main_table(m)
    assert main["trained on"].tolist() == ["train: 8 proteins, 15 images", "train+val: 12 proteins, 23 images"]
    assert "image, authors' labels · n" in main.columns
