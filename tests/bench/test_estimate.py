"""The dry run: the runs of each profile tier and their estimated time, as a table and JSON (the probe
step is replaced by a fixed time per sample; no timing asserts); the tier estimate with the
published seeds at the rate bench-seeds measured (hand-made figures)."""
import json

import pytest

from proloc_lib.bench import estimate
from proloc_lib.cli.main import main as proloc


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


# -- the tier with the published seeds at a measured rate -----------------------------------------
def _dry():
    runs = [{"run": "fusion.authors", "config": "authors", "seed": s, "estimated_seconds": 7200.0} for s in range(5)]
    runs += [{"run": "fusion.corrected", "config": "corrected", "seed": s, "estimated_seconds": 360.0} for s in range(5)]
    total = sum(r["estimated_seconds"] for r in runs)
    return {"runs": runs, "estimated_training_seconds": total, "estimated_training_hours": total / 3600,
            "n_train": 3000, "n_val": 900, "device_name": "GPU X"}


def test_the_published_runs_take_the_measured_time_plus_their_validation():
    seeds = {"config": "authors", "best_mode": "stacked+captured",
             "modes": {"eager": {"published_seeds_hours": 9.0}, "stacked+captured": {"published_seeds_hours": 0.5}}}
    te = estimate.tier_estimate(_dry(), seeds)
    assert te["published_runs"] == 5 and te["published_mode"] == "stacked+captured"
    assert te["published_hours_one_by_one"] == pytest.approx(10.0)          # 5 x 2 h
    assert te["published_hours_measured"] == pytest.approx(0.5 * (1 + 900 / 9000))   # + a third of a step per val sample
    assert te["tier_hours_one_by_one"] == pytest.approx(10.5)
    assert te["tier_hours"] == pytest.approx(10.5 - 10.0 + 0.55)


def test_nothing_to_replace_is_an_error():
    with pytest.raises(ValueError, match="no fusion.authors runs"):
        estimate.tier_estimate({**_dry(), "runs": []}, {"config": "authors", "best_mode": "eager",
                                               "modes": {"eager": {"published_seeds_hours": 1.0}}})
