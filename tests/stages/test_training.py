"""The training stage driver (notebook 03) on a tiny stage (no papermill).

The tiny data (the `write_tiny_stage` fixture): 60 proteins with two images each; label j is on iff
the image tokens carry signal j, so a model that reads the images learns, and one trained on
permuted labels cannot.
"""
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

import proloc_lib.predict as predict_mod
from proloc_lib.core import runs
from proloc_lib.core.errors import UserError
from proloc_lib.data.labels import LABELS
from proloc_lib.stages import common, training
from proloc_lib.training import loop, settings
from proloc_lib.training.checkpoint import Checkpoint

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

    ds = {s: SimpleNamespace(seq_lengths=np.array(v)) for s, v in {"train": [5, 90], "val": [7, 30], "test": [12]}.items()}

    def pad(padding, s):
        return training._pad_to(settings.make_config("corrected", padding=padding), ds[s], ds)
    assert pad("batch", "val") is None
    assert (pad("split", "val"), pad("split", "test")) == (30, 12)       # each split to its own longest
    assert (pad("global", "val"), pad("global", "test")) == (90, 90)
    assert settings.make_config("authors").padding == "split"
