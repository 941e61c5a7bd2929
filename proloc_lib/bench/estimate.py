"""The dry run: a profile's training runs and their estimated time on a device."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from proloc_lib.bench.common import (
    _log,
    _machine,
    _sync,
    encoder_widths,
    read_reference,
    reference_csv_path,
)
from proloc_lib.core import paths, runtime
from proloc_lib.profiles import loader as profiles
from proloc_lib.training import datasets, loop

# -- 6. dry run: the runs of a profile and their estimated time on this device ------------------
# training samples (image rows) of the benchmark split: val = 10% carved from train (seed 0); train + val =
# the whole train file (5,228 rows, 5,169 images: 47 images are listed under two or three paralogs)
VISLOCAS_SIZES = {"train": 4687, "val": 541, "test": 566}
PAPER_LENGTH = 600


def _probe_step_seconds(cfg, widths: dict, device: str, width: int, batch: int, steps: int = 2) -> float:
    """Seconds per training step of ``cfg`` at (batch, width) on ``device``: one untimed step, then ``steps``."""

    torch.manual_seed(0)
    model = loop.build_model(cfg, widths["seq_dim"], widths["img_dim"], 5).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    img = torch.randn(batch, widths["image_tokens"], widths["img_dim"], device=device)
    seq = torch.randn(batch, width, widths["seq_dim"], device=device)
    mask = torch.ones(batch, width, dtype=torch.bool, device=device)
    y = torch.randint(0, 2, (batch, 5), device=device).float()
    lossf = loop.loss_fn(cfg, 4)
    times = []
    for k in range(steps + 1):
        _sync(device)
        t0 = time.perf_counter()
        with loop._autocast(cfg, device):
            out = model(img, seq, mask)
        loss = lossf(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        _sync(device)
        if k:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _dry_lengths(profile: str, data_root=None, reference=None) -> tuple[np.ndarray, str]:
    """Sequence lengths per training sample: stage 01's tables, else the reference CSV, else the paper's ~600."""
    try:
        d = paths.stage_dir(profile, "01_data_assembly", data_root)
        if (d / "images.parquet").exists():
            prot = pd.read_parquet(d / "proteins.parquet")
            img = pd.read_parquet(d / "images.parquet")
            lens = img.merge(prot[["protein_id", "sequence"]], on="protein_id")["sequence"].str.len()
            return lens.to_numpy(), f"stage 01 tables ({d})"
    except Exception:  # noqa: BLE001 - an estimate falls back, never fails
        pass
    try:
        ref = read_reference(reference_csv_path(reference))
        return ref["sequence"].str.len().to_numpy(), "reference CSV lengths (Vislocas test rows)"
    except (FileNotFoundError, ValueError):
        return np.full(64, PAPER_LENGTH), f"assumed {PAPER_LENGTH} residues (no tables found)"


def dry_run(profile: str = "full", device: str = "auto", *, data_root=None, reference=None,
            n_train: int | None = None, n_val: int | None = None, probe_batch_cpu: int = 2) -> dict:
    """List the training runs of a profile and estimate their time from a short timed probe here.

    Each distinct configuration is probed for a few steps at the paper's shapes (the profile's
    encoder widths, its length distribution) and scaled by steps x epochs (max_epochs: an upper
    bound; early stopping ends sooner). On CPU the probe uses batches of ``probe_batch_cpu`` and
    scales per sample. Baselines, evaluation and feature extraction are not included.
    """

    cfg_p = profiles.load_profile(profile)
    device = runtime.resolve_device(device)
    widths = encoder_widths(cfg_p)
    lengths, length_source = _dry_lengths(profile, data_root, reference)
    rng = np.random.default_rng(0)
    n_tr = int(n_train or VISLOCAS_SIZES["train"])
    n_va = int(n_val or VISLOCAS_SIZES["val"])
    tr_len = rng.choice(lengths, n_tr)
    folds = int(cfg_p.get("data", {}).get("split", {}).get("folds", 5) or 5)
    runs = [{**r, "model": r["run_id"]} for r in cfg_p.plan.all_training_runs(folds=folds)]
    probes: dict[str, float] = {}
    out_runs, total = [], 0.0
    for r in runs:
        c = r["train"]
        # train_on: train+val (authors) learns from the validation samples too
        n_fit = n_tr + (n_va if "val" in c.training_splits else 0)
        fit_len = tr_len if n_fit == n_tr else np.concatenate([tr_len, rng.choice(lengths, n_va)])
        plan = datasets.epoch_batches(fit_len, c, shuffle=True, seed=0,
                                      pad_to=None if c.padding == "batch" else int(fit_len.max()))
        widths_used = [w for _, w in plan]
        width = int(np.median(widths_used))
        batch = c.batch_size if device.startswith("cuda") else min(c.batch_size, probe_batch_cpu)
        key = f"{c.hash()}:{width}:{batch}"
        if key not in probes:
            _log(f"probe {r['model']}: batch {batch} x {width} residues on {device}")
            probes[key] = _probe_step_seconds(c, widths, device, width, batch)
        per_sample = probes[key] / batch
        train_s = per_sample * n_fit
        val_s = per_sample / 3 * n_va  # forward only (reported only when trained on)
        secs = c.max_epochs * (train_s + val_s)
        total += secs
        out_runs.append({"run": r["model"], "config": r["config"], "seed": r["seed"], "epochs_max": c.max_epochs,
                         "train_on": c.train_on, "training_samples": n_fit,
                         "batch_size": c.batch_size, "median_padded_width": width, "steps_per_epoch": len(plan),
                         "probe_seconds_per_step": probes[key], "probe_batch": batch,
                         "estimated_seconds": secs})
    return {"profile": profile, **_machine(device), "n_runs": len(out_runs), "runs": out_runs,
            "estimated_training_seconds": total, "estimated_training_hours": total / 3600,
            "n_train": n_tr, "n_val": n_va, "sample_counts": "given" if n_train else "Vislocas benchmark sizes",
            "lengths": length_source, "feature_widths": widths,
            "note": ("Upper bound at max_epochs (early stopping ends sooner); several seeds trained at once are "
                     "counted one by one; baselines, evaluation and feature extraction not included; "
                     "the probe times a few steps on random tensors of the paper's shapes.")}


def tier_estimate(dry: dict, seeds: dict) -> dict:
    """The dry run's training time with its published-loop runs (``fusion.<config>`` of the
    ``bench-seeds`` configuration, estimated one seed at a time) replaced by what ``bench-seeds``
    measured for all seeds at once in its fastest mode, plus their validation passes (forward
    only, a third of a training step per sample, as the dry run counts them). Both must come from
    the same device."""
    run_id = f"fusion.{seeds['config']}"
    published = [r for r in dry["runs"] if r["run"] == run_id]
    best = seeds.get("best_mode")
    if not published or best is None or "published_seeds_hours" not in seeds["modes"][best]:
        raise ValueError(f"no {run_id} runs in the dry run, or no all-seeds measurement in bench-seeds")
    one_by_one = sum(r["estimated_seconds"] for r in published)
    measured = seeds["modes"][best]["published_seeds_hours"] * 3600 * (1 + dry["n_val"] / (3 * dry["n_train"]))
    total = dry["estimated_training_seconds"] - one_by_one + measured
    return {"device_name": dry.get("device_name"), "published_runs": len(published), "published_mode": best,
            "published_hours_one_by_one": one_by_one / 3600, "published_hours_measured": measured / 3600,
            "tier_hours_one_by_one": dry["estimated_training_hours"], "tier_hours": total / 3600,
            "note": "upper bound at max_epochs (early stopping ends sooner); one GPU; baselines, evaluation "
                    "and feature extraction not included"}
