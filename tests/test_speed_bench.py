"""bench-training's new keys, FLOP counting, loader-only throughput and the dry run (no timing asserts)."""
import json

import pytest

from proloc_lib.bench import common
from proloc_lib.bench import estimate
from proloc_lib.bench import training
from proloc_lib.cli.main import main as proloc
from proloc_lib.profiles import loader as profiles
from proloc_lib.training import settings
from reference_csv import write_reference
from test_train_bench import PROTEINS



@pytest.fixture
def csv(tmp_path):
    return write_reference(tmp_path / "ref.csv", PROTEINS)


def test_forward_flops_by_hand():
    cfg = settings.make_config("corrected", d_model=4, n_heads=2, n_blocks=1, ff_mult=2)
    w = {"seq_dim": 3, "img_dim": 5, "image_tokens": 2}
    # proj 2*2*5*4 + 2*7*3*4 = 80 + 168; cross 2*2*16 + 4*7*16 + 4*2*7*4 + 2*2*16 = 64+448+224+64;
    # block 8*2*16 + 4*2*2*4 + 4*2*4*2*4 = 256 + 64 + 256
    assert common.forward_flops(cfg, w, 1, 7) == 80 + 168 + 64 + 448 + 224 + 64 + 256 + 64 + 256
    assert common.forward_flops(cfg, w, 3, 7) == 3 * common.forward_flops(cfg, w, 1, 7)
    assert common.device_peak_tflops("cpu")[0] is None


def test_bench_training_reports_loader_and_tflops(csv, tmp_path):
    r = training.training_throughput(reference=csv, profile="smoke", device="cpu", n_samples=6, seed=0,
                              batch_size_corrected=4, isolate=False, workdir=tmp_path)
    for key in ("training_speedup", "samples_per_s_authors", "samples_per_s_corrected", "loader_only_samples_per_s",
                "achieved_tflops_corrected", "achieved_tflops_authors", "peak_tflops", "fraction_of_peak_corrected"):
        assert key in r
    assert r["loader_only_samples_per_s"] > 0 and r["corrected"]["loader_only"]["resident"] is True
    assert r["peak_tflops"] is None and r["fraction_of_peak_corrected"] is None  # CPU: no peak figure
    # the FLOPs follow the batches the loop was fed: the authors' padding to the longest costs more per sample
    assert r["authors"]["train_gflop_per_sample"] > r["corrected"]["train_gflop_per_sample"] > 0


def test_loader_only_at_the_profiles_shapes(csv):
    r = training.loader_only_throughput(reference=csv, profile="smoke", device="cpu", n_samples=8, min_seconds=0.05)
    assert r["resident"] and r["image_shape"] == [197, 64] and r["batch_dtype"] == "float32"
    assert r["samples"] % 8 == 0 and r["loader_only_samples_per_s"] > 0 and r["random_features"]


def test_dry_run_lists_the_tiers(monkeypatch):
    monkeypatch.setattr(estimate, "_probe_step_seconds", lambda cfg, widths, device, width, batch, steps=2: 0.5 * batch)
    full = estimate.dry_run("full", "cpu", n_train=1000, n_val=100)
    ext = estimate.dry_run("full-extended", "cpu", n_train=1000, n_val=100)
    names = [r["run"] for r in full["runs"]]
    assert names.count("fusion.authors") == names.count("fusion.corrected") == 5 and len(names) == 15
    assert names.count("control.permuted_labels") == 5   # one control run per seed, as the stage trains them
    authors = next(r for r in full["runs"] if r["config"] == "authors")
    assert authors["epochs_max"] == 100 and authors["batch_size"] == 2  # the published schedule
    # per-sample probe time 0.5 s: epochs x (train + val/3)
    assert authors["estimated_seconds"] == pytest.approx(100 * (0.5 * 1000 + 0.5 / 3 * 100))
    assert full["estimated_training_seconds"] == pytest.approx(sum(r["estimated_seconds"] for r in full["runs"]))
    ext_names = [r["run"] for r in ext["runs"]]
    assert set(names) <= set(ext_names)
    assert sum(n.startswith("ablation") for n in ext_names) == 11  # 10 ablations + their reference run
    assert sum(n.startswith("cv.") for n in ext_names) == 5
    assert sum(n.startswith("resplit.") for n in ext_names) == 6
    assert not any(n.startswith(("ablation", "cv.", "resplit.")) for n in names)


def test_dry_run_cli_prints_a_table(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(estimate, "_probe_step_seconds", lambda *a, **k: 0.01)
    assert proloc(["dry-run", "--profile", "full", "--device", "cpu", "--n-train", "100",
                   "--out", str(tmp_path / "d.json")]) == 0
    out = capsys.readouterr().out
    assert "estimated training time" in out and "fusion.authors" in out
    assert json.loads((tmp_path / "d.json").read_text())["n_runs"] == 15
    assert proloc(["dry-run", "--profile", "nope", "--device", "cpu"]) == 2
    assert "nope" in capsys.readouterr().err


def test_resplits_are_checked():
    smoke = profiles.load_profile("smoke")
    for bad in ({"methods": ["random"]}, {"methods": ["stratified"], "folds": 3}):
        with pytest.raises(ValueError, match="resplits"):
            profiles.profile_from_dict({**smoke, "training": {**smoke["training"], "resplits": bad}}, name="t")
    assert profiles.load_profile("full-extended").plan.resplits["methods"][1] == "homology"


def test_profile_names_the_attention_kernels(csv):
    """Attention-weight dropout (authors: model.Attention's explicit softmax, its masks from the run's
    generator) leaves the fused CPU kernel; corrected (mask, no such dropout) keeps it."""
    a = training.profile_training(reference=csv, profile="smoke", device="cpu", config_name="authors", n_samples=4,
                           steps=1, warmup=1)
    c = training.profile_training(reference=csv, profile="smoke", device="cpu", config_name="corrected", n_samples=4,
                           steps=1, warmup=1, batch_size=4)
    # no scaled_dot_product_attention kernel at all: model.Attention's explicit softmax path ran (whether
    # softmax makes the top-ops list of a one-step profile depends on the machine's load)
    assert not any("scaled_dot_product" in op or "flash" in op for op in a["attention_ops"])
    assert any("flash_attention_for_cpu" in op for op in c["attention_ops"])
    assert a["top_ops"] and sum(o["share"] for o in a["top_ops"]) <= 1 + 1e-9
    assert all(o["self_ms"] >= 0 and o["calls"] > 0 for o in c["top_ops"])


def test_bench_seeds_reports_all_seeds_against_one(csv):
    """The published loop's seeds together (threads here, lockstep on CUDA) against one seed."""
    res = training.seeds_throughput(reference=csv, profile="smoke", device="cpu", n_seeds=2, n_samples=4,
                                    modes=("eager", "stacked"))
    assert (res["config"], res["n_seeds"], res["batch_size"], res["n_samples"]) == ("authors", 2, 2, 4)
    assert res["samples_per_s_one_seed"] > 0 and res["samples_per_s_all_seeds"] > 0
    assert res["speedup"] == pytest.approx(res["samples_per_s_all_seeds"] / res["samples_per_s_one_seed"])
    stacked, pub = res["modes"]["stacked"], res["published_seeds"]   # the profile's authors seeds at that rate
    assert stacked["published_seeds_hours"] == pytest.approx(
        pub["seeds"] * pub["max_epochs"] * pub["train_images"] / stacked["samples_per_s"] / 3600)
    assert res["best_mode"] in ("eager", "stacked") and res["padded_width"] == 61
    assert res["random_features"] is True
