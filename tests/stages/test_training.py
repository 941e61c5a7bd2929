"""The training stage driver (notebook 03) on a tiny stage (no papermill).

The tiny data (the `write_tiny_stage` fixture): 60 proteins with two images each; label j is on iff
the image tokens carry signal j, so a model that reads the images learns, and one trained on
permuted labels cannot.

What each configuration trains on (a tiny benchmark-like stage, the `bench_stage` fixture):
``authors`` on the whole benchmark train file (train + val, as the published train.py, which has
no validation part), ``corrected`` on train with val held out; the published per-file padding
width; the result rows saying both, and the two test truths.
"""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score

import proloc_lib.predict as predict_mod
from proloc_lib.core import runs
from proloc_lib.core.errors import UserError
from proloc_lib.data.labels import LABELS
from proloc_lib.evaluation import scoring, tables
from proloc_lib.features.store import END_ROWS, EmbeddingStore
from proloc_lib.stages import common, training
from proloc_lib.stages.common import StageData
from proloc_lib.training import loop, settings
from proloc_lib.training.checkpoint import Checkpoint
from proloc_lib.training.plan import build_plan

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_permuted_labels_keep_prevalence_per_split_and_leave_test_alone():
    rng = np.random.default_rng(0)
    prot = pd.DataFrame((rng.random((40, 5)) < 0.4).astype(int), columns=LABELS).assign(
        protein_id=[f"P{i}" for i in range(40)], split=["train"] * 24 + ["val"] * 8 + ["test"] * 8)
    perm = training.permute_labels(prot, LABELS, seed=3)
    te = prot["split"] == "test"
    pd.testing.assert_frame_equal(perm[te], prot[te])          # scored on the true labels
    for split in ("train", "val"):                              # fitted and selected on permuted ones
        sel = prot["split"] == split
        assert (perm.loc[sel, LABELS].to_numpy() != prot.loc[sel, LABELS].to_numpy()).any()

        def key(f):
            return sorted(map(tuple, f.loc[sel, LABELS].to_numpy()))
        assert key(perm) == key(prot)                           # the same label vectors, other proteins
    assert list(perm["protein_id"]) == list(prot["protein_id"])


@pytest.fixture(scope="module")
def stage(tmp_path_factory, write_tiny_stage, tiny_profile):
    root = tmp_path_factory.mktemp("data")
    write_tiny_stage(root, variant="augreg")
    cfg = tiny_profile()
    stage = training.TrainingStage(cfg, seed=0, device="cpu", data_root=root, progress=False)
    stage.train()
    stage.cross_validate()
    stage.attention_mil()
    stage.controls()
    return root, cfg, stage.results()


def test_training_stage_rows_are_run_ids_with_display_names(stage):
    _, _, res = stage
    for frame in (res.metrics, res.predictions):
        ids = set(frame["model"])
        assert {"fusion.corrected", "fusion.authors", "fusion.corrected_mil", "ablation.reference",
                "ablation.mask_off", "ablation.augreg", "cv.corrected", "control.permuted_labels",
                "resplit.stratified"} == ids
        assert (frame["display"] == frame["model"].map(runs.display_name)).all()
    assert set(res.history["model"]) == set(res.metrics["model"]) - {"fusion.corrected_mil"}
    # seed pairs: corrected and authors scored on the same test proteins with the same seeds
    test = res.predictions[(res.predictions["split"] == "test") & (res.predictions["level"] == "protein")]
    pairs = {m: test[test["model"] == m].groupby("seed")["protein_id"].apply(frozenset).to_dict()
             for m in ("fusion.corrected", "fusion.authors")}
    assert pairs["fusion.corrected"] == pairs["fusion.authors"] and sorted(pairs["fusion.corrected"]) == [0, 1]
    # the authors keep 0.5, the corrected model tunes
    th = res.metrics[res.metrics["metric"] == "threshold"]
    assert (th[th["model"] == "fusion.authors"]["value"] == 0.5).all()
    # re-splits: one row set per repeat, each on its own split
    rs = test[test["model"] == "resplit.stratified"]
    assert sorted(rs["seed"].unique()) == [0, 1]
    assert rs.groupby("seed")["protein_id"].apply(frozenset).nunique() == 2


def test_corrected_learns_and_the_permutation_control_lands_at_chance(stage):
    _, _, res = stage
    test = res.predictions[(res.predictions["split"] == "test") & (res.predictions["level"] == "protein")]

    def mean_auc(model):
        s = test[(test["model"] == model) & (test["seed"] == 0)]
        return np.mean([roc_auc_score(s[f"y:{lab}"], s[f"p:{lab}"]) for lab in LABELS
                        if s[f"y:{lab}"].nunique() == 2])

    assert mean_auc("fusion.corrected") > 0.9
    assert abs(mean_auc("control.permuted_labels") - 0.5) < 0.2


def test_cross_validation_tests_every_protein_once(stage):
    root, _, res = stage
    proteins = pd.read_parquet(root / "tiny" / "01_data_assembly" / "proteins.parquet")
    cv = res.predictions[(res.predictions["model"] == "cv.corrected") & (res.predictions["split"] == "test")
                         & (res.predictions["level"] == "protein")]
    assert sorted(cv["protein_id"]) == sorted(proteins["protein_id"])
    assert set(res.metrics.loc[res.metrics["model"] == "cv.corrected", "fold"]) == {0, 1, 2}


def test_image_variant_ablation_trains_on_its_own_store(stage):
    _, _, res = stage
    assert res.models["ablation.augreg"][0].cfg.img_dim == 12
    assert res.models["ablation.reference"][0].cfg.img_dim == 8


def test_written_outputs_and_checkpoint_round_trip(stage, tmp_path):
    root, cfg, res = stage
    data = common.load_stage_data("tiny", data_root=root)
    plan = cfg.plan
    out = training.write_training_outputs(res, tmp_path / "03_training", cfg=cfg, data=data,
                                             params=training.training_params(plan, profile="tiny", seed=0,
                                                                                device="cpu"))
    metrics = pd.read_csv(out / "metrics.csv")
    assert set(metrics["model"]) == set(res.metrics["model"]) and metrics["git_commit"].notna().all()
    assert set(pd.read_parquet(out / "predictions.parquet")["model"]) == set(metrics["model"])
    man = json.loads((out / "manifest.json").read_text())
    assert man["checkpoints"] == {"fusion.corrected": "checkpoint-corrected", "fusion.authors": "checkpoint-authors"}
    assert not (tmp_path / "03_training.partial").exists()
    ck = Checkpoint.load(out / "checkpoint-corrected", labels=LABELS)
    predict_mod.read_checkpoint_config(out / "checkpoint-corrected")        # what predict validates
    assert ck.run_id == "fusion.corrected" and ck.label_map == "test-map v1"
    model, thresholds, tcfg = res.models["fusion.corrected"]
    assert ck.thresholds == thresholds["protein"] and ck.config_hash == tcfg.hash()
    ds = training.fusion_datasets(data)["test"]
    np.testing.assert_allclose(loop.predict_proba(ck.model, ds), loop.predict_proba(model, ds), atol=1e-6)


def test_authors_train_on_image_targets(tmp_path, write_tiny_stage):
    root = tmp_path / "data"
    _, images = write_tiny_stage(root)
    # one image of P0 disagrees with its protein: the image's own columns must reach training
    data = common.load_stage_data("tiny", data_root=root)
    data.images.loc[data.images["image_id"] == "img0_1", LABELS] = [1, 1, 1, 1, 1]
    img = training.image_samples(data, "train", targets="image").set_index("image_id")
    prot = training.image_samples(data, "train").set_index("image_id")
    assert list(img.loc["img0_1", LABELS]) == [1] * 5 and list(prot.index) == list(img.index)
    assert (img.drop(index="img0_1")[LABELS] == prot.drop(index="img0_1")[LABELS]).all().all()
    assert settings.make_config("authors").targets == "image"
    with pytest.raises(UserError, match="images-nope"):
        data.image_store("nope")


def test_inference_padding_follows_the_configuration():
    from types import SimpleNamespace

    ds = {s: SimpleNamespace(seq_lengths=np.array(v))
          for s, v in {"train": [5, 90], "val": [7, 30], "test": [12]}.items()}
    for d in ds.values():
        d.for_config = lambda cfg, d=d: d   # these rows whatever the configuration

    def pad(padding, s):
        return training._pad_to(settings.make_config("corrected", padding=padding), ds[s], ds)
    assert pad("batch", "val") is None
    assert (pad("split", "val"), pad("split", "test")) == (30, 12)       # each split to its own longest
    assert (pad("global", "val"), pad("global", "test")) == (90, 90)
    assert settings.make_config("authors").padding == "split"


# ----------------------------------------------------------------------------- what each configuration trains on

SPLIT = ["train"] * 8 + ["val"] * 4 + ["test"] * 4
LENGTHS = [5, 6, 7, 8, 9, 10, 11, 12] + [20, 3, 4, 5] + [15, 6, 7, 8]   # train max 12, val 20, test 15


@pytest.fixture(scope="module")
def bench_stage(tmp_path_factory):
    """Train file = 8 train + 4 val proteins, test file = 4, two images each; P0 and P1 (paralogs) share
    one image; the longest sequence of the train file sits in val."""
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
    seq = EmbeddingStore.open(root / "sequences", {"m": "s"}, 6, "sequence", extraction={END_ROWS: True})
    seq.commit({f"h{i}": torch.randn(L, 6) for i, L in enumerate(LENGTHS)},
               end_rows={f"h{i}": torch.full((6,), 10.0 + i) for i in range(n)})   # </s> rows, told apart
    img = EmbeddingStore.open(root / "images", {"m": "i"}, 8, "image")
    img.commit(tokens)
    return StageData(labels=LABELS, proteins=proteins, images=images, seq_store=seq, img_store=img, data_dir=root,
                     emb_dir=root, data_manifest={"labels": LABELS, "truth": "benchmark_columns"},
                     emb_manifest={}, note="tiny test data")


def test_authors_trains_on_the_whole_train_file_corrected_holds_val_out(bench_stage):
    authors, corrected = settings.make_config("authors"), settings.make_config("corrected")
    assert authors.train_on == "train+val" and authors.training_splits == ("train", "val")
    assert corrected.train_on == "train" and corrected.training_splits == ("train",)
    ds = training.fusion_datasets(bench_stage, targets="image", train_on=("train+val",))
    assert set(ds) == {"train", "val", "test", "train+val"}
    whole = ds["train+val"].samples
    assert set(whole["protein_id"]) == {f"P{i}" for i in range(12)}                 # the train file
    assert training._job(ds, authors, seed=0).train_ds is ds["train+val"].for_config(authors)
    assert training._job(ds, corrected, seed=0).train_ds is ds["train"]
    # counts as the result rows give them: the shared image is one image, trained on under both proteins
    assert training.training_set(ds, authors) == {"train_on": "train+val", "train_proteins": 12,
                                                  "train_images": 23, "train_samples": 24}
    assert training.training_set(ds, corrected) == {"train_on": "train", "train_proteins": 8,
                                                    "train_images": 15, "train_samples": 16}


def test_split_padding_is_the_published_per_file_width(bench_stage):
    """The published prott5.py pads each file to its own longest sequence, </s> row included: with
    train+val, the train file's longest (20, a val protein) + 1, the test file's (15) + 1; not
    train's alone (12 + 1). Without the </s> row (end_token drop), one less."""
    authors = settings.make_config("authors")
    ds = training.fusion_datasets(bench_stage, train_on=("train+val",))
    assert training._pad_to(authors, ds["train+val"], ds) == 21 == max(LENGTHS[:12]) + 1
    assert training._pad_to(authors, ds["test"], ds) == 16 == max(LENGTHS[12:]) + 1
    assert training._pad_to(authors, ds["train"], ds) == 13
    dropped = settings.make_config("authors", end_token="drop")
    assert training._pad_to(dropped, ds["train+val"], ds) == 20


def test_authors_trains_and_predicts_on_the_end_row_corrected_on_the_residues(bench_stage):
    """authors (end_token keep) gets each sequence's stored </s> row last, in training and in the
    predictions it is scored on; corrected gets the residue rows alone."""
    ds = training.fusion_datasets(bench_stage, train_on=("train+val",))
    authors, corrected = settings.make_config("authors"), settings.make_config("corrected")
    train = training._job(ds, authors, seed=0).train_ds
    for i, h in ((8, "h8"), (0, "h0")):                                   # a val protein, a train one
        rows = train._seq(h)
        assert rows.shape == (LENGTHS[i] + 1, 6) and torch.equal(rows[-1], torch.full((6,), 10.0 + i))
    assert torch.equal(training._job(ds, corrected, seed=0).train_ds._seq("h8"),
                       bench_stage.seq_store.get("h8").float())

    class Spy(torch.nn.Module):   # records what inference feeds the model
        def forward(self, img, seq, mask):
            seen.append((seq.clone(), mask.clone()))
            return torch.zeros(len(img), len(LABELS))
    for cfg, extra in ((authors, 1), (corrected, 0)):
        seen = []
        training._predict(Spy(), ds, cfg, "cpu", splits_=("test",))
        assert len(seen) == 1                                              # 8 test images: one batch
        seq, mask = seen[0]
        test = ds["test"].samples["seq_hash"].map(lambda h: int(h[1:])).tolist()
        assert mask.sum(1).tolist() == [LENGTHS[i] + extra for i in test]
        if extra:
            assert seq.shape[1] == max(LENGTHS[12:]) + 1                   # the published file's width
            assert all(torch.equal(seq[r, LENGTHS[i]], torch.full((6,), 10.0 + i)) for r, i in enumerate(test))


def test_result_rows_say_what_each_run_trained_on_and_score_both_truths(bench_stage):
    torch.manual_seed(0)
    plan = build_plan({"seeds": [0], "base": {"d_model": 8, "n_heads": 2, "n_blocks": 1, "max_epochs": 1},
                       "configurations": {"corrected": {"batch_size": 8}, "authors": {"batch_size": 8}},
                       "control": False})
    res = training.run_fusion_plan(bench_stage, plan, progress=False)
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


TIMING_COLUMNS = ["seconds", "samples_per_s"]   # wall-clock columns of a history: never equal between two runs


def test_the_stage_on_two_training_ranks_writes_what_one_process_writes(tmp_path, write_tiny_stage, tiny_profile):
    """Notebook 03's plan (configurations x seeds) and its permutation control: metrics,
    predictions and checkpoints are the same (training.distributed, 2 gloo ranks on the CPU, one
    thread per process); histories differ only in their wall-clock columns."""
    cfg = tiny_profile(ablations={}, cross_validation=False, resplits=None, control=True)
    out = {}
    for gpus in (1, 2):
        root = tmp_path / f"gpus-{gpus}"
        write_tiny_stage(root)
        stage = training.TrainingStage(cfg, seed=0, device="cpu", data_root=root, progress=False, gpus=gpus)
        stage.train()
        stage.controls()
        out[gpus] = stage.write()
    one, two = out[1], out[2]
    m1, m2 = (pd.read_csv(d / "metrics.csv") for d in (one, two))
    assert {"fusion.corrected", "fusion.authors", "control.permuted_labels"} <= set(m1["model"])
    pd.testing.assert_frame_equal(m1, m2)
    pd.testing.assert_frame_equal(pd.read_parquet(one / "predictions.parquet"),
                                  pd.read_parquet(two / "predictions.parquet"))
    h1, h2 = (pd.read_csv(d / "history.csv").drop(columns=TIMING_COLUMNS) for d in (one, two))
    pd.testing.assert_frame_equal(h1, h2)
    for ck in ("checkpoint-corrected", "checkpoint-authors"):   # the same tensors and configuration
        w1, w2 = (load_file(d / ck / "model.safetensors") for d in (one, two))
        assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
        assert json.loads((one / ck / "config.json").read_text()) == json.loads((two / ck / "config.json").read_text())
    assert np.isfinite(m1.select_dtypes("number").to_numpy(dtype=float)).any()
