"""Training-throughput benchmarks (authors' loop vs corrected): shapes, fairness, FLOP counting,
loader-only throughput, the attention kernels, seeds together, the CLI's JSON.

No timing assertions: speed depends on the machine. A tiny reference CSV and the smoke profile's
model size keep it to a few seconds.
"""
import json

import pandas as pd
import pytest
import torch

from proloc_lib.bench import common, training
from proloc_lib.cli.main import main as proloc
from proloc_lib.data.labels import LABELS
from proloc_lib.features.store import EmbeddingStore
from proloc_lib.profiles import loader as profiles
from proloc_lib.training import datasets, settings

AA = "ACDEFGHIKLMNPQRSTVWY"
PROTEINS = {"ENSG00000000001": ("M" + AA[:11], 3),       # 12 residues, 3 images
            "ENSG00000000002": ("M" + AA + AA[:9], 2),   # 30 residues
            "ENSG00000000003": ("M" + AA * 3, 1)}        # 61 residues: the longest, a single image
L_MAX = 61


@pytest.fixture
def csv(tmp_path, write_reference):
    return write_reference(tmp_path / "ref.csv", PROTEINS)


def test_sample_rows_are_seeded_and_hold_the_longest(csv):
    ref = common.read_reference(csv)
    a, b = common.sample_rows(ref, 4, seed=3), common.sample_rows(ref, 4, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 4 and a["length"].max() == L_MAX  # the single longest row is always in
    assert set(a["length"]) <= {12, 30, 61} and a["sample"].is_unique
    assert len(common.sample_rows(ref, 10, seed=0)) == 10  # more than the 6 rows: drawn with replacement


def test_encoder_widths_of_the_profiles():
    assert common.encoder_widths(profiles.load_profile("demo")) == {"seq_dim": 64, "img_dim": 64, "image_tokens": 197}
    assert common.encoder_widths(profiles.load_profile("full")) == {"seq_dim": 1024, "img_dim": 768,
                                                                     "image_tokens": 197}


def test_configs_share_the_model_size():
    cfgs = common.training_configs(profiles.load_profile("demo"), epochs=1, size_overrides={"n_blocks": 1})
    a, c = cfgs["authors"], cfgs["corrected"]
    assert (a.d_model, a.n_heads, a.n_blocks) == (c.d_model, c.n_heads, c.n_blocks) == (64, 4, 1)
    assert (a.batch_size, a.padding != "batch", a.bucket_batches, a.apply_mask, a.share_blocks, a.optimizer) == \
        (2, True, False, False, True, "adam")
    assert (c.batch_size, c.padding != "batch", c.bucket_batches, c.amp) == (32, False, True, True)
    assert a.max_epochs == c.max_epochs == 1 and a.patience is None and c.patience is None


def test_authors_batches_are_padded_to_the_global_longest(csv, tmp_path):
    rows = common.sample_rows(common.read_reference(csv), 6, seed=0)
    widths = {"seq_dim": 8, "img_dim": 8, "image_tokens": 5}
    seq_path, img_path, samples = common.build_random_stores(rows, widths, tmp_path / "stores", LABELS, seed=0)
    seq_store, img_store = EmbeddingStore(seq_path), EmbeddingStore(img_path)
    assert len(seq_store) == 3 and len(img_store) == 6
    assert seq_store.get(samples["seq_hash"][0]).shape == (samples["length"][0], 8)
    assert img_store.get(samples["image_id"][0]).dtype == torch.float16
    ds = datasets.FusionDataset(samples, LABELS, seq_store, img_store)
    assert sorted(ds.seq_lengths) == sorted(rows["length"]) and ds.seq_lengths.max() == L_MAX
    cfgs = common.training_configs(profiles.load_profile("smoke"), batch_size_corrected=4)
    for name, cfg in cfgs.items():
        stats = training.loader_stats(ds, cfg, seed=1)
        seen = [(len(y), seq.shape[1]) for _, seq, _, y in datasets.make_loader(ds, cfg, True, 1)]
        assert stats["n_steps"] == len(seen) and stats["n_samples_in_batches"] == 6
        assert stats["residue_tokens_fed"] == sum(n * w for n, w in seen)
        assert sum(stats["batch_shapes"].values()) == len(seen)
        assert f"{seen[0][0]}x{seen[0][1]}" in stats["batch_shapes"]
        if name == "authors":  # batch 2, every batch as long as the longest of the whole set, + its </s> row
            assert {w for _, w in seen} == {L_MAX + 1} and stats["pad_to"] == L_MAX + 1 and stats["batch_sizes"] == [2]
        else:  # each bucket only as long as its own longest
            assert min(w for _, w in seen) < L_MAX and stats["pad_to"] is None
    assert training.loader_stats(ds, cfgs["corrected"], 1)["residue_tokens_fed"] < \
        training.loader_stats(ds, cfgs["authors"], 1)["residue_tokens_fed"]
    seq_store.close()
    img_store.close()


def test_training_throughput_in_process(csv, tmp_path):
    r = training.training_throughput(reference=csv, profile="smoke", device="cpu", n_samples=6, seed=0,
                              batch_size_corrected=4, isolate=False, workdir=tmp_path)
    assert {"training_speedup", "samples_per_s_authors", "samples_per_s_corrected", "peak_mem_mb_authors",
            "peak_mem_mb_corrected", "goal", "goal_met", "device", "torch", "model_size", "n_samples",
            "note", "random_features"} <= set(r)
    assert r["goal"] == 20 and r["goal_met"] == (r["training_speedup"] >= 20)
    assert r["random_features"] is True and "random" in r["note"].lower()
    assert r["model_size"] == {"d_model": 32, "n_heads": 2, "n_blocks": 1}  # smoke's base, both loops
    assert r["n_samples"] == 6 and r["reference_L_max"] == L_MAX
    a, c = r["authors"], r["corrected"]
    # the same samples went through both production loops, each counted by train_fusion itself
    assert a["samples_seen_per_epoch"] == c["samples_seen_per_epoch"] == [6]
    assert a["samples_digest"] == c["samples_digest"] and a["max_sequence_length"] == L_MAX
    assert a["loader"]["pad_to"] == L_MAX + 1 and a["loader"]["padded_lengths_min_max"] == [L_MAX + 1] * 2
    assert a["config"]["batch_size"] == 2 and c["config"]["bucket_batches"] is True
    assert a["amp_active"] is False and c["amp_active"] is False  # CPU: no mixed precision
    assert r["training_speedup"] == pytest.approx(c["samples_per_s"] / a["samples_per_s"])
    assert a["peak_mem_mb"] >= 0 and c["peak_mem_mb"] >= 0
    assert not list(tmp_path.glob("proloc-bench-train-*"))  # the temporary stores are gone


def test_cli_prints_json(csv, tmp_path, capsys):
    out = tmp_path / "train.json"
    rc = proloc(["bench-training", "--reference", str(csv), "--profile", "smoke", "--device", "cpu",
                 "--n-samples", "4", "--batch-size", "4", "--no-isolate", "--no-warmup", "--out", str(out)])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)  # stdout holds exactly one JSON object
    assert res["n_samples"] == 4 and res["training_speedup"] > 0 and res["isolated"] is False
    assert json.loads(out.read_text()) == res


def test_cli_missing_reference(tmp_path, capsys):
    assert proloc(["bench-training", "--reference", str(tmp_path / "nope"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("proloc bench-training: ") and "reference CSV not found" in err


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
    assert res["best_mode"] in ("eager", "stacked") and res["padded_width"] == 61 + 1   # + the </s> row
    assert res["random_features"] is True


@pytest.mark.slow  # ~20-30 s: two fresh interpreters
def test_training_throughput_isolated(csv):
    r = training.training_throughput(reference=csv, profile="smoke", device="cpu", n_samples=6, batch_size_corrected=4)
    assert r["isolated"] is True and r["authors"]["samples_seen_per_epoch"] == [6]
