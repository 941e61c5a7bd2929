"""The dry run: a profile's training runs and their estimated time on a device."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from proloc_lib.bench.common import (
    _log,
    _machine,
    _sync,
    encoder_widths,
    forward_flops,
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
        fit_len = datasets.row_lengths(fit_len, c)   # + the </s> row where the configuration keeps it
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


# -- 7. estimates for named GPU kinds, without the GPU ---------------------------------------------
@dataclass(frozen=True)
class GpuKind:
    """Data-sheet figures of one GPU (dense tensor-core peaks, no sparsity)."""
    name: str
    half_tflops: float          # bf16/fp16 (mixed precision: the corrected configuration)
    fp32_tflops: float          # TF32 tensor cores where the GPU has them, else plain fp32 (amp off: authors)
    memory_gib: float           # usable device memory (the card's GB, as PyTorch reports it)
    bandwidth_gbs: float        # memory bandwidth
    colab_session_h: float      # assumed length of one Colab session on this kind
    colab_tier: str


GPU_KINDS = {
    "T4": GpuKind("NVIDIA T4 16GB", 65.0, 8.1, 14.7, 320.0, 4.0, "free tier, ~4 h usable (often cut sooner)"),
    "L4": GpuKind("NVIDIA L4 24GB", 121.0, 60.0, 22.0, 300.0, 12.0, "Colab Pro, 12 h"),
    "A100": GpuKind("NVIDIA A100 40GB SXM", 312.0, 156.0, 39.4, 1555.0, 12.0, "Colab Pro, 12 h"),
    "H100": GpuKind("NVIDIA H100 80GB SXM", 989.0, 494.0, 79.1, 3350.0, 12.0, "Colab Pro, 12 h"),
}
# Assumed, not measured on these cards: what small-batch training of this model reaches.
ACHIEVED_FLOP_FRACTION = 0.30    # of the tensor-core peak (d_model 512 matmuls, a few thousand rows)
ACHIEVED_BANDWIDTH_FRACTION = 0.60
STEP_OVERHEAD_S = 0.006          # per optimizer step: kernel launches, optimizer, Python (eager PyTorch)
CUDA_CONTEXT_GIB = 0.5           # CUDA context and allocator slack beside PyTorch's own tensors
# Assumed sizes of what the full profile downloads (not measured here: no network)
ENCODER_WEIGHTS_GB = {"ProtT5-XL encoder (half precision)": 2.4, "ViT-B/16 in21k": 0.35}
VISLOCAS_PROTEINS = 548          # 494 training + 54 test proteins (shared/reference/vislocas)
HPA_JPEG_MB = 1.45               # the one real HPA image in shared/reference (3200 x 3200 px); else assumed


def significant(x: float, digits: int = 2) -> float:
    """``x`` rounded to ``digits`` significant digits (0 stays 0)."""
    if not x:
        return 0.0
    return round(x, digits - 1 - int(math.floor(math.log10(abs(x)))))


def format_hours(hours: float) -> str:
    """Hours with 2 significant digits ("270 h", "3.4 h", "0.05 h"), never minutes with decimals."""
    return f"{significant(hours):g} h"


def _params(cfg, widths: dict) -> int:
    return sum(p.numel() for p in loop.build_model(cfg, widths["seq_dim"], widths["img_dim"], 5).parameters())


def activation_bytes(cfg, widths: dict, width: int, *, batch: int = 1) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one training forward of
    ``batch`` samples at ``width`` residues, counted on the CPU in float32 (parameters not
    counted; each storage once). Per sample, this scales linearly with the batch."""
    torch.manual_seed(0)
    model = loop.build_model(cfg, widths["seq_dim"], widths["img_dim"], 5).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    img = torch.randn(batch, widths["image_tokens"], widths["img_dim"])
    seq = torch.randn(batch, width, widths["seq_dim"])
    mask = torch.ones(batch, width, dtype=torch.bool)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(img, seq, mask)
    del out
    return int(sum(seen.values()))


def _run_workload(c, tr_len, va_len, widths) -> dict:
    """Batches, FLOPs and the largest batch x width of one run at its max_epochs."""
    tr_len, va_len = datasets.row_lengths(tr_len, c), datasets.row_lengths(va_len, c)
    pad = None if c.padding == "batch" else int(max(tr_len.max(), va_len.max()))
    train = datasets.epoch_batches(tr_len, c, shuffle=True, seed=0, pad_to=pad)
    val = datasets.epoch_batches(va_len, c, shuffle=False, seed=0, pad_to=pad)
    largest = max(train, key=lambda b: len(b[0]) * b[1])
    return {"steps_per_epoch": len(train), "val_batches": len(val),
            "median_padded_width": int(np.median([w for _, w in train])),
            "largest_batch": (len(largest[0]), int(largest[1])),
            "flops_per_epoch": sum(3 * forward_flops(c, widths, len(i), w) for i, w in train)
                               + sum(forward_flops(c, widths, len(i), w) for i, w in val)}


def _seconds_on(kind: GpuKind, c, work: dict, n_params: int, act_per_sample: float) -> float:
    """Modelled seconds of one run at max_epochs: FLOPs at the assumed fraction of the peak, bytes
    (weights, optimizer, activations) at the assumed fraction of the bandwidth, and a fixed
    overhead per step."""
    peak = (kind.half_tflops if c.amp else kind.fp32_tflops) * 1e12 * ACHIEVED_FLOP_FRACTION
    steps = work["steps_per_epoch"] + work["val_batches"]
    batch, width = work["largest_batch"]
    act = act_per_sample * batch * (work["median_padded_width"] / max(1, width))   # a typical step's
    bytes_per_epoch = work["steps_per_epoch"] * (40 * n_params + 2 * act) + work["val_batches"] * (4 * n_params + act)
    per_epoch = (work["flops_per_epoch"] / peak
                 + bytes_per_epoch / (kind.bandwidth_gbs * 1e9 * ACHIEVED_BANDWIDTH_FRACTION)
                 + steps * STEP_OVERHEAD_S)
    return c.max_epochs * per_epoch


def _disk(cfg_p, widths: dict, n_images: int, n_ckpt_params: list[int], mean_length: float) -> dict:
    stream = bool(cfg_p.get("data", {}).get("stream"))
    jpeg_mb, jpeg_src = HPA_JPEG_MB, "assumed 1.45 MB per image"
    try:
        sample = paths.reference_dir() / "hpa_ihc_sample.jpg"
        jpeg_mb, jpeg_src = sample.stat().st_size / 1e6, f"measured on {sample.name} (one real HPA image)"
    except OSError:
        pass
    gb = {"images": n_images * jpeg_mb / 1e3 * (0.05 if stream else 1.0),
          "image store (float16)": n_images * widths["image_tokens"] * widths["img_dim"] * 2 / 1e9,   # tokens x grid
          "sequence store (float16)": VISLOCAS_PROTEINS * mean_length * widths["seq_dim"] * 2 / 1e9,
          "checkpoints": sum(4 * p for p in n_ckpt_params) / 1e9,
          "resume state (largest run, while training)": 16 * max(n_ckpt_params) / 1e9,
          **({"encoder weights (hub cache)": sum(ENCODER_WEIGHTS_GB.values())}
             if cfg_p["embeddings"]["sequence"].get("pretrained") else {})}
    return {"gb": {k: significant(v) for k, v in gb.items()}, "total_gb": significant(sum(gb.values())),
            "basis": f"images: {n_images} JPEGs, {jpeg_src}" + ("; data.stream keeps thumbnails only (~5%)"
                                                                   if stream else "")
                     + "; stores: tokens x width x 2 bytes; checkpoints: 4 bytes per parameter; encoder "
                       "weights: assumed sizes"}


def gpu_estimate(profile: str = "full", kinds=None, *, data_root=None, reference=None,
                 n_train: int | None = None, n_val: int | None = None) -> dict:
    """Time, peak GPU memory and disk of a profile's training runs on named GPU kinds, without a GPU.

    What is counted here: the runs (``profile.plan``), their batches and widths (the sequence
    lengths of stage 01, else of the reference tables), FLOPs (``forward_flops``), parameters, and
    the activations autograd keeps (counted on the CPU). What is assumed: each kind's data-sheet
    figures, the achieved fractions of peak and bandwidth, the per-step overhead, the Colab
    session lengths and download sizes; each is named in the result's ``assumptions``.
    """
    cfg_p = profiles.load_profile(profile)
    kinds = list(GPU_KINDS) if kinds in (None, "all") else [kinds] if isinstance(kinds, str) else list(kinds)
    unknown = [k for k in kinds if k not in GPU_KINDS]
    if unknown:
        raise ValueError(f"unknown GPU kind(s) {unknown} (known: {', '.join(GPU_KINDS)}, or all)")
    widths = encoder_widths(cfg_p)
    lengths, length_source = _dry_lengths(profile, data_root, reference)
    lengths = np.minimum(lengths, int(cfg_p["embeddings"].get("max_residues", lengths.max())))
    rng = np.random.default_rng(0)
    n_tr, n_va = int(n_train or VISLOCAS_SIZES["train"]), int(n_val or VISLOCAS_SIZES["val"])
    tr_len, va_len = rng.choice(lengths, n_tr), rng.choice(lengths, n_va)
    folds = int(cfg_p.get("data", {}).get("split", {}).get("folds", 5) or 5)
    runs = cfg_p.plan.all_training_runs(folds=folds)
    per_cfg: dict[str, dict] = {}
    out_runs = []
    for r in runs:
        c = r["train"]
        key = c.hash()
        if key not in per_cfg:
            # train_on: train+val (authors) learns from the validation samples too
            fit_len = np.concatenate([tr_len, va_len]) if "val" in c.training_splits else tr_len
            work = _run_workload(c, fit_len, va_len, widths)
            batch, width = work["largest_batch"]
            act1 = activation_bytes(c, widths, width)                 # one sample at the widest batch's width
            n_params = _params(c, widths)
            per_cfg[key] = {**work, "params": n_params, "activation_bytes_per_sample": act1,
                            "seconds": {k: _seconds_on(GPU_KINDS[k], c, work, n_params, act1) for k in kinds}}
        w = per_cfg[key]
        out_runs.append({"run": r["run_id"], "config": r["config"], "seed": r["seed"], "epochs_max": c.max_epochs,
                         "train_on": c.train_on, "batch_size": c.batch_size, "steps_per_epoch": w["steps_per_epoch"],
                         "median_padded_width": w["median_padded_width"], "amp": c.amp,
                         "tflop_total": significant(c.max_epochs * w["flops_per_epoch"] / 1e12),
                         "hours": {k: w["seconds"][k] / 3600 for k in kinds}})
    # peak memory: the widest batch of any configuration, that configuration's seeds in lockstep
    # (each seed's weights, gradients and AdamW moments: 16 bytes per parameter), its features resident
    feat_bytes = 2 * (n_tr * widths["image_tokens"] * widths["img_dim"] + VISLOCAS_PROTEINS * float(np.mean(lengths))
                      * widths["seq_dim"])
    peak_parts = {}
    for key, w in per_cfg.items():
        batch, width = w["largest_batch"]
        n_seeds = sum(1 for r in runs if r["train"].hash() == key)
        parts = {"weights, gradients, AdamW state (16 B/parameter x runs of one configuration in lockstep)":
                     16 * w["params"] * n_seeds,
                 "activations kept for backward (largest batch x width, float32 count)":
                     w["activation_bytes_per_sample"] * batch,
                 "training features resident on the GPU (float16)": feat_bytes}
        if sum(parts.values()) > sum(peak_parts.values() or [0]):
            peak_parts = parts
    peak_gib = sum(peak_parts.values()) / 2**30 + CUDA_CONTEXT_GIB
    total_h = {k: sum(r["hours"][k] for r in out_runs) for k in kinds}
    tiers = _tiers(out_runs, kinds)
    per_kind = {}
    for k in kinds:
        g = GPU_KINDS[k]
        fits_mem = peak_gib <= g.memory_gib
        per_kind[k] = {"name": g.name, "hours": total_h[k], "peak_memory_gib": significant(peak_gib),
                       "memory_gib": g.memory_gib, "fits_memory": fits_mem,
                       "colab_session_h": g.colab_session_h, "colab_tier": g.colab_tier,
                       "fits_one_session": fits_mem and total_h[k] <= g.colab_session_h,
                       "tiers_that_fit": [t for t, h in tiers.items() if fits_mem and h[k] <= g.colab_session_h]}
    ckpt_params = [per_cfg[r["train"].hash()]["params"] for r in runs if r["run_id"] in ("fusion.corrected",
                                                                                          "fusion.authors")]
    ckpt_params = list(dict.fromkeys(ckpt_params)) or [max(w["params"] for w in per_cfg.values())]
    return {"profile": profile, "n_runs": len(out_runs), "runs": out_runs, "kinds": per_kind,
            "tiers": {t: {k: v for k, v in h.items()} for t, h in tiers.items()},
            "peak_memory_parts_gib": {k: significant(v / 2**30) for k, v in peak_parts.items()},
            "disk": _disk(cfg_p, widths, sum(VISLOCAS_SIZES.values()), ckpt_params, float(np.mean(lengths))),
            "n_train": n_tr, "n_val": n_va, "lengths": length_source, "feature_widths": widths,
            "measured": ["runs, batches and padded widths (the profile's plan on the sequence lengths named in "
                         "'lengths')", "FLOPs per batch (forward_flops: matmuls and attention)",
                         "parameters and activations kept for backward (counted on this CPU, float32; "
                         "bf16/fp16 autocast on a GPU keeps many of them at half size)",
                         "JPEG size (one real HPA image, where shared/reference is present)"],
            "assumptions": {"gpu figures": "vendors' data sheets: dense bf16/fp16 and TF32 (T4: fp32) tensor-core "
                                           "peaks, memory size and bandwidth",
                            "achieved fraction of peak FLOP/s": ACHIEVED_FLOP_FRACTION,
                            "achieved fraction of bandwidth": ACHIEVED_BANDWIDTH_FRACTION,
                            "overhead per step (s)": STEP_OVERHEAD_S,
                            "CUDA context (GiB)": CUDA_CONTEXT_GIB,
                            "colab sessions": {k: f"{GPU_KINDS[k].colab_session_h:g} h ({GPU_KINDS[k].colab_tier})"
                                               for k in kinds},
                            "encoder weights (GB)": ENCODER_WEIGHTS_GB,
                            "epochs": "every run to max_epochs (early stopping ends corrected runs sooner)",
                            "not included": "feature extraction (notebook 02), baselines, evaluation, downloads"}}


def _tiers(out_runs: list[dict], kinds) -> dict:
    """Hours of the same profile with fewer seeds (``training.seeds`` in a copy of it), to say which
    smaller tier fits one session: every run whose seed is among the first n seeds of its configuration."""
    seeds: dict[str, list] = {}
    for r in out_runs:
        seeds.setdefault(r["config"], [])
        if r["seed"] not in seeds[r["config"]]:
            seeds[r["config"]].append(r["seed"])
    most = max(len(v) for v in seeds.values())
    out = {}
    for n in sorted({most, min(3, most), 1}, reverse=True):
        sel = [r for r in out_runs if r["seed"] in seeds[r["config"]][:n]]
        name = "the profile as it is" if n == most else f"first {n} seed{'s' if n > 1 else ''} (training.seeds)"
        out[name] = {k: sum(r["hours"][k] for r in sel) for k in kinds}
    return out


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
