"""The stage drivers of notebooks 03 and 04 on a tiny stage built here (no papermill).

The tiny data: 60 proteins with two images each; label j is on iff the image tokens carry
signal j, so a model that reads the images learns, and one trained on permuted labels cannot.
"""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

import proloc_lib.predict as predict_mod
from proloc_lib.core import manifest, runs
from proloc_lib.core.errors import UserError
from proloc_lib.data.labels import LABELS
from proloc_lib.features.store import EmbeddingStore, store_checksums
from proloc_lib.profiles.loader import load_profile, profile_from_dict
from proloc_lib.stages import baselines, common, training
from proloc_lib.training import loop, settings
from proloc_lib.training.checkpoint import Checkpoint

AA = list("ACDEFGHIKLMNPQRSTVWY")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one intra-op thread is faster, and far faster on a shared, loaded machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_stage(root, n=60, seed=0, variant=None):
    """data/tiny/01_data_assembly (tables + manifest) and 02_embeddings (stores + manifest)."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 5)) < 0.4).astype(int)
    y[np.arange(n), rng.integers(0, 5, n)] = 1                    # every protein has a label
    d01, d02 = root / "tiny" / "01_data_assembly", root / "tiny" / "02_embeddings"
    d01.mkdir(parents=True)
    split = np.array(["train"] * (n // 2) + ["val"] * (n // 4) + ["test"] * (n - n // 2 - n // 4))
    proteins = pd.DataFrame(y, columns=LABELS).assign(
        protein_id=[f"P{i}" for i in range(n)], seq_hash=[f"h{i}" for i in range(n)], split=split,
        sequence=["".join(rng.choice(AA, int(rng.integers(20, 60)))) for _ in range(n)], fold=np.arange(n) % 3)
    img_rows, img_tokens = [], {}
    for i in range(n):
        for k in range(2):
            t = torch.tensor(rng.normal(size=(4, 8)) * 0.1, dtype=torch.float32)
            t[:, :5] += torch.tensor(y[i] * 3.0, dtype=torch.float32)
            img_tokens[f"img{i}_{k}"] = t
            img_rows.append({"image_id": f"img{i}_{k}", "protein_id": f"P{i}", "split": split[i],
                             "path": f"images/{i}_{k}.png", **dict(zip(LABELS, y[i]))})
    images = pd.DataFrame(img_rows)
    proteins.to_parquet(d01 / "proteins.parquet")
    images.to_parquet(d01 / "images.parquet")
    seal(d01, "01_data_assembly", {}, labels=LABELS, label_map="test-map v1")
    seq = EmbeddingStore.open(d02 / "sequences", {"m": "s"}, 6, "sequence")
    seq.commit({f"h{i}": torch.tensor(rng.normal(size=(int(rng.integers(3, 9)), 6)), dtype=torch.float32)
                for i in range(n)})
    EmbeddingStore.open(d02 / "images", {"m": "i"}, 8, "image").commit(img_tokens)
    if variant:   # an image feature variant: the same signal, other noise, 12-wide
        EmbeddingStore.open(d02 / f"images-{variant}", {"m": "i2"}, 12, "image").commit(
            {k: torch.cat([t, torch.randn(4, 4) * 0.1], 1) for k, t in img_tokens.items()})
    tables = {f: c for f, c in json.loads((d01 / "manifest.json").read_text())["outputs"].items()
              if f.endswith(".parquet")}
    seal(d02, "02_embeddings", {"01_data_assembly": tables}, outputs=store_checksums(d02),
         sequence_store={"fingerprint": {"m": "s"}}, image_store={"fingerprint": {"m": "i"}})
    return proteins, images


def seal(folder, stage, upstream, outputs=None, **fields):
    """The manifest a stage writes last: its outputs' checksums and what it read (``Stage`` checks them)."""
    man = manifest.build_manifest(stage, {"profile": "tiny", "seed": 0}, outputs_dir=folder, outputs=outputs,
                                  extra={"upstream": upstream, **fields})
    (folder / "manifest.json").write_text(json.dumps(man))


def profile_cfg(**training_over):
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


def test_plan_names_every_run_by_a_registry_id_and_checks_options_up_front():
    plan = profile_cfg().plan
    ids = [r["run_id"] for r in plan.runs]
    assert ids == ["fusion.corrected", "fusion.authors"] * 2 + ["ablation.reference", "ablation.mask_off",
                                                                 "ablation.augreg"]
    assert all(runs.parse(i) for i in ids)
    by_id = {r["run_id"]: r for r in plan.runs}
    assert by_id["ablation.augreg"]["image_variant"] == "augreg" and "image_variant" not in by_id["ablation.mask_off"]
    assert by_id["ablation.mask_off"]["train"].apply_mask is False and by_id["ablation.mask_off"]["train"].max_epochs == 1
    # corrected and authors run with the same seeds (pairs)
    assert sorted(r["seed"] for r in plan.runs if r["config"] == "authors" and "ablation" not in r) == [0, 1]
    assert (plan.cross_validation, plan.control, plan.resplits["config"]) == ("corrected", "corrected", "corrected")
    assert runs.display_name("ablation.mask_off") == "ablation: mask off"
    assert runs.display_name("resplit.stratified") == "fusion (corrected), stratified re-splits"
    with pytest.raises(ValueError, match="reserved"):
        profile_cfg(ablations={"reference": {"apply_mask": False}}).plan
    with pytest.raises(ValueError, match="twice"):
        profile_cfg(ablations={"mask off": {}, "mask_off": {}}).plan
    with pytest.raises(ValueError, match="repeat"):
        profile_cfg(resplits={"repeat": 2}).plan
    with pytest.raises(ValueError, match="learning_rate"):
        profile_cfg(ablations={"x": {"learning_rate": 1}}).plan
    assert profile_cfg(control=False).plan.control is None
    assert profile_cfg(control=True, cross_validation=True).plan.cross_validation == "corrected"
    with pytest.raises(ValueError, match="training.control"):
        profile_cfg(control={"confg": "corrected"}).plan


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
        key = lambda f: sorted(map(tuple, f.loc[sel, LABELS].to_numpy()))
        assert key(perm) == key(prot)                           # the same label vectors, other proteins
    assert list(perm["protein_id"]) == list(prot["protein_id"])


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_stage(root, variant="augreg")
    cfg = profile_cfg()
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


def test_authors_train_on_image_targets(tmp_path):
    root = tmp_path / "data"
    _, images = write_stage(root)
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


def test_baselines_stage(tmp_path):
    root = tmp_path / "data"
    write_stage(root)
    cfg = profile_cfg()
    data = common.load_stage_data("tiny", data_root=root)
    res = baselines.run_baselines_stage(data, cfg["baselines"], seed=0)
    assert list(dict.fromkeys(res.metrics["model"])) == list(baselines.BASELINE_RUNS)
    assert (res.metrics["display"] == res.metrics["model"].map(runs.display_name)).all()
    pred = res.predictions[res.predictions["level"] == "protein"]
    p = lambda m, s: baselines.protein_probs(pred, m, s, data.proteins.query("split == @s")["protein_id"], LABELS)
    np.testing.assert_allclose(p("baseline.late_fusion", "test"),
                               (p("baseline.sequence_mlp", "test") + p("baseline.image_mlp", "test")) / 2)
    # label frequency: the training prevalence for everyone
    train_prev = data.proteins.query("split == 'train'")[LABELS].mean().to_numpy()
    np.testing.assert_allclose(p("baseline.label_frequency", "test"), np.tile(train_prev, (15, 1)))
    # the image baseline reads the signal (label j <-> image token signal j)
    f1 = res.metrics.query("level == 'protein' and split == 'test' and label == 'overall' and metric == 'f1'"
                           ).set_index("model")["value"]
    assert f1["baseline.image_mlp"] > 0.8 and f1["baseline.image_mlp"] > f1["baseline.label_frequency"] + 0.2
    out = baselines.write_baseline_outputs(res, tmp_path / "04_baselines", cfg=cfg, data=data, params={})
    assert set(pd.read_csv(out / "metrics.csv")["model"]) == set(baselines.BASELINE_RUNS)


def test_inference_padding_follows_the_configuration():
    from types import SimpleNamespace

    ds = {s: SimpleNamespace(seq_lengths=np.array(v)) for s, v in {"train": [5, 90], "val": [7, 30], "test": [12]}.items()}
    pad = lambda padding, s: training._pad_to(settings.make_config("corrected", padding=padding), ds[s], ds)
    assert pad("batch", "val") is None
    assert (pad("split", "val"), pad("split", "test")) == (30, 12)       # each split to its own longest
    assert (pad("global", "val"), pad("global", "test")) == (90, 90)
    assert settings.make_config("authors").padding == "split"
