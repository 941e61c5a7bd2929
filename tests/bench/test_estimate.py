"""The dry run: the runs of each profile tier and their estimated time, as a table and JSON (the probe
step is replaced by a fixed time per sample; no timing asserts)."""
import json

import pytest

from proloc_lib.bench import estimate
from proloc_lib.cli.main import main as proloc


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


