"""The dry run: the runs of each profile tier and their estimated time, as a table and JSON (the probe
step is replaced by a fixed time per sample; no timing asserts); the tier estimate with the
published seeds at the rate bench-seeds measured (hand-made figures)."""
import json

import pytest
import torch

from proloc_lib.bench import estimate
from proloc_lib.bench.common import encoder_widths, forward_flops
from proloc_lib.cli.main import main as proloc
from proloc_lib.profiles.loader import load_profile
from proloc_lib.training import settings


def test_dry_run_lists_the_tiers(monkeypatch):
    monkeypatch.setattr(estimate, "_probe_step_seconds", lambda cfg, widths, device, width, batch, steps=2: 0.5 * batch)
    full = estimate.dry_run("full", "cpu", n_train=1000, n_val=100)
    ext = estimate.dry_run("full-extended", "cpu", n_train=1000, n_val=100)
    names = [r["run"] for r in full["runs"]]
    assert names.count("fusion.authors") == names.count("fusion.corrected") == 5 and len(names) == 20
    assert names.count("control.permuted_labels") == 10  # training.control.runs: 10 in full
    authors = next(r for r in full["runs"] if r["config"] == "authors")
    assert authors["epochs_max"] == 100 and authors["batch_size"] == 2  # the published schedule
    # per-sample probe time 0.5 s: epochs x (train + val/3)
    # authors trains on train + val (the whole train file): 1000 + 100 samples
    assert authors["train_on"] == "train+val" and authors["training_samples"] == 1100
    assert authors["estimated_seconds"] == pytest.approx(100 * (0.5 * 1100 + 0.5 / 3 * 100))
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
    assert json.loads((tmp_path / "d.json").read_text())["n_runs"] == 20
    assert proloc(["dry-run", "--profile", "nope", "--device", "cpu"]) == 2
    assert "nope" in capsys.readouterr().err


@pytest.mark.parametrize("hours, shown", [(268.375, "270 h"), (22.0074, "22 h"), (8.657, "8.7 h"), (3.04, "3 h"),
                                          (0.0823, "0.082 h"), (0.0, "0 h")])
def test_hours_have_two_significant_digits(hours, shown):
    assert estimate.format_hours(hours) == shown


def test_activation_count_matches_the_saved_tensors_of_a_hand_sized_linear_stack():
    """The saved-tensor count on a case whose answer is known: the model's first projection keeps
    its input, so one more sample adds at least that input's bytes, and the count grows linearly."""
    cfg = settings.make_config("corrected", {"d_model": 16, "n_heads": 2, "n_blocks": 1})
    widths = {"seq_dim": 8, "img_dim": 12, "image_tokens": 5}
    one = estimate.activation_bytes(cfg, widths, 30, batch=1)
    two = estimate.activation_bytes(cfg, widths, 30, batch=2)
    inputs = (30 * 8 + 5 * 12) * 4                      # the sample's float32 features, kept by the projections
    assert one >= inputs and two == pytest.approx(2 * one, rel=0.02)
    wider = estimate.activation_bytes(cfg, widths, 60, batch=1)
    assert one < wider < 2.2 * one                      # residue tokens scale with the width


@pytest.fixture(scope="module")
def full():
    return estimate.gpu_estimate("full", "all")


def test_full_profile_table_for_every_named_gpu(full, capsys):
    from proloc_lib.cli.dry_run import gpu_table

    out = gpu_table(full)
    for kind in ("T4", "L4", "A100", "H100"):
        assert f"\n  {kind} " in out
    assert "GiB" in out and "Disk:" in out and "Assumed:" in out and "Measured or counted here:" in out
    assert " min" not in out and "16102.5" not in out


def test_the_estimate_scales_with_the_gpu_and_counts_memory_and_disk(full):
    res = full
    kinds = res["kinds"]
    assert set(kinds) == {"T4", "L4", "A100", "H100"}
    # same work, faster card: less time (T4 > L4 > A100 > H100 on this workload)
    hours = [kinds[k]["hours"] for k in ("T4", "L4", "A100", "H100")]
    assert hours == sorted(hours, reverse=True) and hours[-1] > 0
    # memory is the sum of its parts plus the assumed CUDA context; the same on every card
    parts = sum(res["peak_memory_parts_gib"].values()) + estimate.CUDA_CONTEXT_GIB
    assert kinds["T4"]["peak_memory_gib"] == pytest.approx(parts, rel=0.05)
    assert len({v["peak_memory_gib"] for v in kinds.values()}) == 1
    assert all(v["fits_memory"] == (v["peak_memory_gib"] <= v["memory_gib"]) for v in kinds.values())
    # a session fits when time and memory both do; a fitting tier is never longer than the session
    for k, v in kinds.items():
        assert v["fits_one_session"] == (v["fits_memory"] and v["hours"] <= v["colab_session_h"])
        for tier in v["tiers_that_fit"]:
            assert res["tiers"][tier][k] <= v["colab_session_h"]
    # the full profile's runs: 5 seeds of corrected and authors, the permuted-label control
    runs = [r["run"] for r in res["runs"]]
    assert runs.count("fusion.corrected") == 5 and runs.count("fusion.authors") == 5
    assert res["disk"]["gb"]["images"] > res["disk"]["gb"]["image store (float16)"] > 0
    assert "achieved fraction of peak FLOP/s" in res["assumptions"] and res["measured"]


def test_flops_per_run_are_the_sum_over_its_batches():
    cfg_p = load_profile("full")
    widths = encoder_widths(cfg_p)
    c = settings.make_config("corrected", {"d_model": 512, "n_heads": 8, "n_blocks": 6, "max_epochs": 2})
    import numpy as np
    tr, va = np.full(64, 100), np.full(16, 100)
    work = estimate._run_workload(c, tr, va, widths)
    expected = 2 * 3 * forward_flops(c, widths, 32, 100) + forward_flops(c, widths, 16, 100)
    assert work["steps_per_epoch"] == 2 and work["largest_batch"] == (32, 100)
    assert work["flops_per_epoch"] == pytest.approx(expected)


def test_a_faster_card_is_the_peak_ratio_when_flops_dominate():
    k = estimate.GPU_KINDS
    c = settings.make_config("corrected", {"max_epochs": 1})
    work = {"steps_per_epoch": 0, "val_batches": 0, "largest_batch": (1, 1), "median_padded_width": 1,
            "flops_per_epoch": 1e18}
    t4, h100 = (estimate._seconds_on(k[g], c, work, 0, 0) for g in ("T4", "H100"))
    assert t4 / h100 == pytest.approx(k["H100"].half_tflops / k["T4"].half_tflops)


def test_cuda_asked_without_cuda_gives_the_gpu_table(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: --device cuda probes it")
    assert proloc(["dry-run", "--profile", "smoke", "--device", "cuda"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("no CUDA device here for --device cuda") and "H100" in out
    assert proloc(["dry-run", "--profile", "smoke", "--gpu", "T4", "--json"]) == 0
    assert '"T4"' in capsys.readouterr().out


def test_unknown_gpu_kind_is_one_line(capsys):
    assert proloc(["dry-run", "--profile", "smoke", "--gpu", "P100"]) == 2
    err = capsys.readouterr().err
    assert "unknown GPU kind 'P100'" in err and "T4" in err and "Traceback" not in err


# -- the tier with the published seeds at a measured rate -----------------------------------------
def _dry():
    runs = [{"run": "fusion.authors", "config": "authors", "seed": s, "estimated_seconds": 7200.0} for s in range(5)]
    runs += [{"run": "fusion.corrected", "config": "corrected", "seed": s, "estimated_seconds": 360.0}
             for s in range(5)]
    total = sum(r["estimated_seconds"] for r in runs)
    return {"runs": runs, "estimated_training_seconds": total, "estimated_training_hours": total / 3600,
            "n_train": 3000, "n_val": 900, "device_name": "GPU X"}


def test_the_published_runs_take_the_measured_time_plus_their_validation():
    seeds = {"config": "authors", "best_mode": "stacked+captured",
             "modes": {"eager": {"published_seeds_hours": 9.0}, "stacked+captured": {"published_seeds_hours": 0.5}}}
    te = estimate.tier_estimate(_dry(), seeds)
    assert te["published_runs"] == 5 and te["published_mode"] == "stacked+captured"
    assert te["published_hours_one_by_one"] == pytest.approx(10.0)          # 5 x 2 h
    # + a third of a step per val sample
    assert te["published_hours_measured"] == pytest.approx(0.5 * (1 + 900 / 9000))
    assert te["tier_hours_one_by_one"] == pytest.approx(10.5)
    assert te["tier_hours"] == pytest.approx(10.5 - 10.0 + 0.55)


def test_nothing_to_replace_is_an_error():
    with pytest.raises(ValueError, match="no fusion.authors runs"):
        estimate.tier_estimate({**_dry(), "runs": []}, {"config": "authors", "best_mode": "eager",
                                               "modes": {"eager": {"published_seeds_hours": 1.0}}})
