"""Training protocol: named configurations, switches, thresholds on validation only, resume, NaN."""
import numpy as np
import pandas as pd
import pytest
import torch

from proloc_lib.data.labels import LABELS
from proloc_lib.evaluation import scoring
from proloc_lib.features.store import EmbeddingStore
from proloc_lib.profiles.loader import load_profile, profile_from_dict
from proloc_lib.training import datasets, loop, settings
from proloc_lib.training.losses import authors_loss
from proloc_lib.training.plan import build_plan


def test_named_configurations_differ_exactly_as_documented():
    a, c = settings.make_config("authors"), settings.make_config("corrected")
    assert (a.share_blocks, a.apply_mask, a.optimizer, a.lr, a.batch_size, a.dropout) == (True, False, "adam", 1e-5, 2, 0.5)
    assert (a.select_on, a.thresholds, a.loss, a.padding, a.patience) == ("train_loss", "fixed", "authors", "split", None)
    assert (c.share_blocks, c.apply_mask, c.select_on, c.thresholds, c.bucket_batches) == (False, True, "val_loss", "tuned", True)
    assert (a.attn_dropout, c.attn_dropout, c.dropout) == (None, 0.0, 0.1)  # None: attention takes `dropout`
    attn_p = [m.dropout for m in loop.build_model(a, 8, 8, 5).modules() if isinstance(m, torch.nn.MultiheadAttention)]
    assert attn_p == [0.5] * 2  # cross-attention + the one shared block
    attn_p = [m.dropout for m in loop.build_model(c, 8, 8, 5).modules() if isinstance(m, torch.nn.MultiheadAttention)]
    assert attn_p == [0.0] * (1 + c.n_blocks)
    # one switch at a time, for the ablations
    assert settings.make_config("corrected", apply_mask=False).apply_mask is False
    assert settings.make_config("corrected").hash() != settings.make_config("corrected", apply_mask=False).hash()


def test_unknown_options_fail_before_any_work():
    with pytest.raises(ValueError, match="learning_rate"):
        settings.make_config("corrected", learning_rate=0.1)
    with pytest.raises(ValueError, match="optimizer"):
        settings.make_config("corrected", optimizer="sgd")
    with pytest.raises(ValueError, match="unknown training configuration"):
        settings.make_config("paper")
    with pytest.raises(ValueError, match="epochs"):
        profile_from_dict({**load_profile("smoke"), "training": {"epochs": 3}}, name="t")
    plan = build_plan({"seeds": [0, 1], "base": {"d_model": 16, "n_heads": 2},
                       "configurations": {"corrected": {}, "authors": {}},
                       "ablations": {"mask off": {"of": "corrected", "apply_mask": False}}}).runs
    assert [r["run_id"] for r in plan] == ["fusion.corrected", "fusion.authors"] * 2 + [
        "ablation.reference", "ablation.mask_off"]
    assert plan[-1]["train"].apply_mask is False and plan[-1]["train"].d_model == 16


def test_authors_loss_weights_plasma_membrane():
    logits = torch.zeros(4, 5)
    y = torch.zeros(4, 5)
    y[:, 0] = 1
    base = authors_loss(logits, y)
    y2 = y.clone()
    y2[:, 4] = 1      # same number of wrong labels, but now on plasma membrane... no: logits 0 -> same BCE
    logits2 = logits.clone()
    logits2[:, 4] = -3.0   # confidently wrong on PM costs far more than on another label
    logits3 = logits.clone()
    logits3[:, 1] = -3.0
    logits3[:, 4] = 0.0
    y3 = y.clone()
    y3[:, 1] = 1
    assert authors_loss(logits2, y2) > 5 * authors_loss(logits3, y3)
    assert torch.isfinite(base)


def test_thresholds_are_tuned_on_validation_only():
    rng = np.random.default_rng(0)
    y = (rng.random((60, 5)) < 0.3).astype(int)
    p = np.clip(y * 0.3 + rng.random((60, 5)) * 0.3, 0, 1)   # positives sit higher, below 0.5
    th = scoring.tune_thresholds(y, p, split="val")
    assert (th < 0.5).all()
    with pytest.raises(ValueError, match="validation"):
        scoring.tune_thresholds(y, p, split="test")
    prot = pd.DataFrame(y, columns=LABELS).assign(protein_id=[f"P{i}" for i in range(60)])
    val, test = prot.iloc[:30], prot.iloc[30:]
    res, ths, _ = scoring.evaluate("m", LABELS, prot, (val, p[:30]), (test, p[30:]), tune=True, image_level=False)
    np.testing.assert_allclose(ths["protein"], scoring.tune_thresholds(y[:30], p[:30], "val"))
    # changing test labels cannot change the thresholds
    prot2 = prot.copy()
    prot2.loc[30:, LABELS] = 1 - prot2.loc[30:, LABELS]
    _, ths2, _ = scoring.evaluate("m", LABELS, prot2, (prot2.iloc[:30], p[:30]), (prot2.iloc[30:], p[30:]),
                                  tune=True, image_level=False)
    assert ths == ths2


def make_stores(tmp_path, n=40, seed=0):
    """Tiny stores where label j is on iff image token 0 carries signal j."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 5)) < 0.4).astype(int)
    seq = EmbeddingStore.open(tmp_path / "seq", {"m": "s"}, 6, "sequence")
    img = EmbeddingStore.open(tmp_path / "img", {"m": "i"}, 8, "image")
    seq.commit({f"h{i}": torch.tensor(rng.normal(size=(int(rng.integers(3, 9)), 6)), dtype=torch.float32)
                for i in range(n)})
    imgs = {}
    for i in range(n):
        t = torch.tensor(rng.normal(size=(4, 8)) * 0.1, dtype=torch.float32)
        t[0, :5] += torch.tensor(y[i] * 2.0, dtype=torch.float32)
        imgs[f"img{i}"] = t
    img.commit(imgs)
    proteins = pd.DataFrame(y, columns=LABELS).assign(
        protein_id=[f"P{i}" for i in range(n)], seq_hash=[f"h{i}" for i in range(n)],
        split=["train"] * (n // 2) + ["val"] * (n // 4) + ["test"] * (n - n // 2 - n // 4))
    images = pd.DataFrame({"image_id": [f"img{i}" for i in range(n)], "protein_id": [f"P{i}" for i in range(n)]})
    ds = {s: datasets.FusionDataset(datasets.image_samples(images, proteins, LABELS, s), LABELS,
                                    EmbeddingStore(tmp_path / "seq"), EmbeddingStore(tmp_path / "img"))
          for s in ("train", "val", "test")}
    return ds


def test_training_learns_and_resumes_identically(tmp_path):
    ds = make_stores(tmp_path)
    cfg = settings.make_config("corrected", d_model=16, n_heads=2, n_blocks=1, max_epochs=12, patience=None,
                               lr=1e-2, batch_size=8, dropout=0.1)
    model, hist = loop.train_fusion(ds["train"], ds["val"], cfg, LABELS, seed=0, progress=False)
    assert hist["train_loss"].iloc[-1] < 0.5 * hist["train_loss"].iloc[0]
    assert hist["best"].sum() == 1 and hist.loc[hist["best"], "val_loss"].iloc[0] == hist["val_loss"].min()
    # interrupted after 3 epochs, resumed: same final weights as the uninterrupted run
    short = cfg
    resume = tmp_path / "resume"

    class Stop(Exception):
        pass

    calls = {"n": 0}
    orig = loop.evaluate_loss

    def interrupt(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise Stop
        return orig(*a, **k)

    loop.evaluate_loss = interrupt
    try:
        with pytest.raises(Stop):
            loop.train_fusion(ds["train"], ds["val"], short, LABELS, seed=0, progress=False, resume_dir=resume)
    finally:
        loop.evaluate_loss = orig
    resumed, hist2 = loop.train_fusion(ds["train"], ds["val"], short, LABELS, seed=0, progress=False,
                                           resume_dir=resume)
    assert len(hist2) == 12
    for (k, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_authors_selection_uses_training_loss(tmp_path):
    ds = make_stores(tmp_path, seed=1)
    cfg = settings.make_config("authors", d_model=16, n_heads=2, n_blocks=2, max_epochs=3, batch_size=4, lr=1e-3)
    model, hist = loop.train_fusion(ds["train"], ds["val"], cfg, LABELS, seed=0, progress=False)
    assert hist.loc[hist["best"], "train_loss"].iloc[0] == hist["train_loss"].min()
    assert len(model.blocks) == 1 and model.cfg.apply_mask is False


def test_nan_loss_stops_with_a_message_and_keeps_the_best_model(tmp_path):
    ds = make_stores(tmp_path)
    cfg = settings.make_config("corrected", d_model=16, n_heads=2, n_blocks=1, max_epochs=4, patience=None,
                               batch_size=8)
    orig = loop.loss_fn
    state = {"epochs": 0}

    def poisoned(cfg, pm):
        f = orig(cfg, pm)

        def g(logits, y):
            out = f(logits, y)
            return out * float("nan") if state["epochs"] >= 2 * len(ds["train"]) // 8 + 2 else out
        return g

    def counting(*a, **k):
        f = poisoned(*a, **k)

        def h(logits, y):
            state["epochs"] += 1
            return f(logits, y)
        return h

    loop.loss_fn = counting
    try:
        with pytest.raises(loop.NaNLossError, match="non-finite") as err:
            loop.train_fusion(ds["train"], ds["val"], cfg, LABELS, seed=0, progress=False)
    finally:
        loop.loss_fn = orig
    assert len(err.value.history) >= 1
    assert all(torch.isfinite(p).all() for p in err.value.model.parameters())


def test_bucketed_batches_cover_everyone_and_respect_the_token_budget():
    rng = np.random.default_rng(0)
    lengths = np.array([50] * 40 + [4000] * 3 + [300] * 20)
    batches = datasets.bucketed_batches(lengths, 16, rng, batch_tokens=8000)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 16 and (len(b) == 1 or lengths[b].max() * len(b) <= 8000)
    assert max(len(b) for b in batches if lengths[b].max() == 4000) <= 2


def test_images_per_protein_ablation_trains_on_fewer_images(tmp_path):
    ds = make_stores(tmp_path)
    one = ds["train"].samples                        # one image per protein in these stores
    doubled = datasets.FusionDataset(pd.concat([one, one], ignore_index=True), LABELS, ds["train"].seq_store,
                                     ds["train"].img_store)
    sub = doubled.subset(doubled.samples.groupby("protein_id").head(1).index)
    assert len(sub) == len(one) and sub.samples["protein_id"].is_unique
    seen = {}
    orig = loop.epoch_batches

    def spy(lengths, cfg_, **kw):
        if kw["shuffle"]:
            seen[cfg_.images_per_protein] = len(lengths)
        return orig(lengths, cfg_, **kw)

    loop.epoch_batches = spy
    try:
        for k in (1, None):
            cfg = settings.make_config("corrected", d_model=16, n_heads=2, n_blocks=1, max_epochs=1,
                                       images_per_protein=k)
            loop.train_fusion(doubled, ds["val"], cfg, LABELS, seed=0, progress=False)
    finally:
        loop.epoch_batches = orig
    assert seen == {1: len(one), None: 2 * len(one)}
