"""Benchmarks of the sequence feature store and of length-bucketed embedding (offline).

``proloc bench`` prints one JSON object with three measurements:

1. **Store size** against the authors' layout. The published ProLoc-IHS code keeps one padded
   float32 ProtT5 matrix per *image row*: ``rows x L_max x 1024 x 4`` bytes, ``L_max`` being the
   longest sequence of the set. (Their code also keeps the ``</s>`` row, i.e. ``L_max + 1``; the
   headline ratio uses the smaller, conservative ``L_max`` and reports the other beside it.) Ours
   keeps each *unique* sequence once, float16, at its true length, plus a float16 mean vector
   and its ``</s>`` row.
   Both are computed from the real row count and sequence lengths of the reference set, and ours
   is *measured*: a real store of zero tensors with the true shapes is written to a temporary
   folder with :class:`EmbeddingStore` (safetensors headers and ``store.json`` included), sized
   with :func:`store_size_bytes`, and deleted. No model and no network are needed.
2. **Throughput**: the same unique sequences through the same model, (a) in fixed-size batches
   each padded to the *global* longest sequence (the authors' way), (b) in length buckets under a
   token budget through :meth:`SequenceEncoder.embed_batch` (ours). Both keep full-length
   sequences (no truncation), warm up once on the shortest sequence, and report the best of
   ``repeats`` timings.
3. **Peak memory** of each mode, each in a fresh spawned process: peak RSS growth over a
   baseline taken after the model load and warm-up on CPU, ``torch.cuda.max_memory_allocated``
   growth on CUDA.

Timings depend on the machine; the offline default uses the demo's tiny random-weight ProtT5
(``"random_weights": true`` in the JSON), so its throughput says nothing about ProtT5-XL itself.
``--full-model`` uses configs/full.yaml's encoder (network or a local HF cache, best on a GPU);
offline it stops at once with the encoders' :class:`OfflineError`.

``proloc bench-training`` prints one JSON object on the **training
loop**: samples per second of the ``authors`` configuration (batch 2, every batch padded to the
longest sequence of the training set) against ``corrected`` (length-bucketed batches of 32; bf16
mixed precision on CUDA), the same model size (the profile's ``training.base`` d_model, n_heads,
n_blocks) and the same samples, through the production :func:`training.train_fusion`. The data
are shaped like the reference set (its image rows, each with its protein's real sequence length;
the longest protein is always included, so the authors' loop pads to the global longest as theirs
did) but the features are random float16 of the profile's encoder widths: throughput does not
depend on the values. Each loop runs in a fresh spawned process (clean peak-memory figures).
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor

import torch

from proloc_lib.bench.common import (
    SIZE_KEYS,
    PeakMemory,
    _load_average,
    _log,
    _machine,
    _samples_digest,
    _sync,
    build_random_stores,
    device_peak_tflops,
    encoder_widths,
    epoch_flops,
    read_reference,
    reference_csv_path,
    sample_rows,
    training_configs,
)
from proloc_lib.bench.estimate import VISLOCAS_SIZES
from proloc_lib.core import runtime
from proloc_lib.core.errors import one_line
from proloc_lib.data.labels import LABELS
from proloc_lib.features.store import STORE_DTYPE, EmbeddingStore
from proloc_lib.profiles import loader as profiles
from proloc_lib.training import datasets, loop, settings

TRAINING_GOAL = 20.0          # corrected / authors samples per second
TRAINING_NOTE = ("Timings and memory are machine-dependent (CPU model, thread count, other load, GPU). "
                 "Features are RANDOM float16 tensors of the profile's encoder widths at the reference set's "
                 "real sequence lengths: training throughput depends on the shapes, not on the values, so these "
                 "numbers say nothing about accuracy. Both loops run the production train_fusion with the same "
                 "d_model / n_heads / n_blocks on the same samples; the validation pass is not timed. On CPU mixed "
                 "precision is off (amp applies on CUDA only), so there the gain comes from length bucketing and "
                 "the larger batch alone.")


def loader_stats(ds, cfg, seed: int) -> dict:
    """What :func:`datasets.make_loader` feeds the model in one epoch (index lists only, no data read).

    The widths are those ``collate`` pads to: the batch's longest, or ``pad_to`` (the training
    set's longest) under the authors' global padding. Epoch ``e`` of train_fusion uses
    ``seed + e``, so ``seed + 1`` describes its first epoch exactly.
    """
    ds = ds.for_config(cfg)   # the rows the configuration is fed (authors: + the </s> row)
    loader = datasets.make_loader(ds, cfg, True, seed)
    pad_to = loader.collate_fn.keywords.get("pad_to")
    lengths = ds.seq_lengths
    batches = [list(b) for b in loader.batch_sampler]
    widths = [max(pad_to or 0, int(max(lengths[i] for i in b))) for b in batches]
    tokens = sum(len(b) * w for b, w in zip(batches, widths))
    real = int(sum(lengths[i] for b in batches for i in b))
    shapes: dict[str, int] = {}
    for bt, w in zip(batches, widths):
        shapes[f"{len(bt)}x{w}"] = shapes.get(f"{len(bt)}x{w}", 0) + 1
    return {"n_steps": len(batches), "batch_sizes": sorted({len(b) for b in batches}),
            "batch_shapes": shapes,  # "samples x padded residues": number of steps
            "pad_to": pad_to, "padded_lengths_min_max": [min(widths), max(widths)],
            "residue_tokens_fed": tokens, "padding_fraction": 1 - real / tokens,
            "n_samples_in_batches": sum(len(b) for b in batches)}


def _train_worker(job: dict) -> dict:
    """One training loop (fresh spawned process, or this one): warm-up, then one timed train_fusion."""

    torch.set_num_threads(job["threads"])
    seq_store, img_store = EmbeddingStore(job["seq_store"]), EmbeddingStore(job["img_store"])
    samples, labels, cfg, device = job["samples"], job["labels"], job["cfg"], job["device"]
    train_ds = datasets.FusionDataset(samples, labels, seq_store, img_store)
    val_ds = datasets.FusionDataset(samples.loc[job["val_index"]], labels, seq_store, img_store)
    if job["warmup"]:  # library initialisation off the clock: one step on the shortest rows
        short = samples.loc[samples["length"].sort_values(kind="stable").index[:min(cfg.batch_size, len(samples))]]
        short_ds = datasets.FusionDataset(short, labels, seq_store, img_store)
        one = settings.TrainConfig.from_dict({**settings.train_config_dict(cfg), "max_epochs": 1})
        loop.train_fusion(short_ds, short_ds, one, labels, device, job["seed"], progress=False)
    mem = PeakMemory(device)
    mem.start()
    model, hist = loop.train_fusion(train_ds, val_ds, cfg, labels, device, job["seed"], progress=False)
    peak = mem.peak_mb()
    hist = hist.to_dict(orient="records")
    last = hist[-1]
    flops = epoch_flops(train_ds, cfg, job["widths"], job["seed"] + len(hist), datasets.pad_length(cfg, train_ds))
    peak_tf, basis = device_peak_tflops(device)
    tflops = flops / float(last["seconds"]) / 1e12
    res = {"samples_per_s": float(last["samples_per_s"]), "seconds": float(last["seconds"]),
           "samples_per_s_all_epochs": [float(h["samples_per_s"]) for h in hist],
           "samples_seen_per_epoch": [int(round(h["samples_per_s"] * h["seconds"])) for h in hist],
           "epochs": len(hist), "train_loss": [float(h["train_loss"]) for h in hist],
           "peak_mem_mb": peak, "peak_mem_method": mem.method,
           "n_parameters": int(sum(p.numel() for p in model.parameters())),
           "n_samples": len(train_ds), "samples_digest": _samples_digest(train_ds.samples),
           "max_sequence_length": int(train_ds.seq_lengths.max()),
           "loader": loader_stats(train_ds, cfg, job["seed"] + len(hist)),
           "amp_active": bool(cfg.amp and str(device).startswith("cuda")), "warmup": job["warmup"],
           "train_gflop_per_sample": flops / len(train_ds) / 1e9, "achieved_tflops": tflops,
           "peak_tflops": peak_tf, "peak_basis": basis,
           "fraction_of_peak": tflops / peak_tf if peak_tf else None}
    if job.get("loader_only"):  # the same samples' batches delivered to the device with no model
        res["loader_only"] = loader_only(train_ds, cfg, device, seed=job["seed"])
    seq_store.close()
    img_store.close()
    return res


def training_throughput(reference=None, profile: str = "demo", device: str = "auto", n_samples: int = 96,
                        epochs: int = 1, seed: int = 0, batch_size_corrected: int = 32,
                        size_overrides: dict | None = None, isolate: bool = True, warmup: bool = True,
                        n_val: int = 2, threads: int | None = None,
                        workdir: str | os.PathLike | None = None, capture_step: str = "off") -> dict:
    """Samples/s and peak memory of the authors' training loop against the corrected one (JSON-ready).

    ``capture_step``: the authors loop's compiled step (``TrainConfig.capture_step``; the corrected
    loop's batches change shape, so it stays eager); with ``epochs`` >= 2 the reported last epoch
    leaves compilation out. ``size_overrides`` (d_model, n_heads, n_blocks) apply to both configurations alike. The
    headline ``samples_per_s`` of each is its last epoch's, as train_fusion measures it (the
    training loop only, validation excluded). With ``isolate`` each loop runs in a fresh
    spawned process; otherwise both run here (faster; rougher memory figures). ``threads``: CPU
    threads of each loop (default: torch's); on a loaded machine 1 avoids OpenMP oversubscription.
    """
    load_before = _load_average()
    cfg = profiles.load_profile(profile)
    device = runtime.resolve_device(device)
    widths = encoder_widths(cfg)
    cfgs = training_configs(cfg, epochs, batch_size_corrected, size_overrides)
    cfgs["authors"] = _with(cfgs["authors"], capture_step=capture_step)
    csv = reference_csv_path(reference)
    ref = read_reference(csv)
    rows = sample_rows(ref, n_samples, seed)
    ctx = multiprocessing.get_context("spawn")
    res: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="proloc-bench-train-", dir=workdir) as tmp:
        seq_path, img_path, samples = build_random_stores(rows, widths, tmp, LABELS, seed)
        val_index = samples["length"].sort_values(kind="stable").index[:max(1, min(n_val, len(samples)))].tolist()
        _log(f"training: {len(samples)} samples of {samples['protein'].nunique()} proteins, lengths "
             f"{samples['length'].min()}..{samples['length'].max()}, widths {widths}, device {device}")
        job = {"seq_store": str(seq_path), "img_store": str(img_path), "samples": samples, "labels": list(LABELS),
               "val_index": val_index, "device": device, "seed": seed, "threads": threads or torch.get_num_threads(),
               "warmup": warmup, "widths": widths}
        for name, tcfg in cfgs.items():
            _log(f"{name}: batch {tcfg.batch_size}, "
                 + ("padded to the longest of the set" if tcfg.padding != "batch" else "length-bucketed")
                 + f", amp {'on' if tcfg.amp and device.startswith('cuda') else 'off'}"
                 + (", fresh process" if isolate else ""))
            if isolate:
                with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                    res[name] = pool.submit(_train_worker,
                                            dict(job, cfg=tcfg, loader_only=name == "corrected")).result()
            else:
                before = torch.get_num_threads()
                try:
                    res[name] = _train_worker(dict(job, cfg=tcfg, loader_only=name == "corrected"))
                finally:
                    torch.set_num_threads(before)
            res[name]["config"] = settings.train_config_dict(tcfg)
            _log(f"{name}: {res[name]['samples_per_s']:.2f} samples/s, peak {res[name]['peak_mem_mb']:.0f} MB")
    if res["authors"]["samples_digest"] != res["corrected"]["samples_digest"]:
        raise RuntimeError("the two loops did not train on the same samples")
    a, c = res["authors"], res["corrected"]
    speedup = c["samples_per_s"] / a["samples_per_s"]
    lengths = ref["sequence"].str.len()
    return {
        "training_speedup": speedup,
        "samples_per_s_authors": a["samples_per_s"],
        "samples_per_s_corrected": c["samples_per_s"],
        "loader_only_samples_per_s": c["loader_only"]["loader_only_samples_per_s"],
        "achieved_tflops_authors": a["achieved_tflops"],
        "achieved_tflops_corrected": c["achieved_tflops"],
        "peak_tflops": c["peak_tflops"],
        "fraction_of_peak_corrected": c["fraction_of_peak"],
        "train_gflop_per_sample_corrected": c["train_gflop_per_sample"],
        "peak_mem_mb_authors": a["peak_mem_mb"],
        "peak_mem_mb_corrected": c["peak_mem_mb"],
        "peak_mem_method": a["peak_mem_method"],
        "goal": TRAINING_GOAL,
        "goal_met": speedup >= TRAINING_GOAL,
        **_machine(device, threads),
        "load_average_1min_before_after": [load_before, _load_average()],
        "profile": profile,
        "model_size": {k: getattr(cfgs["authors"], k) for k in SIZE_KEYS},
        "n_parameters": {"authors": a["n_parameters"], "corrected": c["n_parameters"]},
        "feature_widths": widths,
        "random_features": True,
        "features": (f"random float16, sequence {widths['seq_dim']} per residue at the real lengths, image "
                     f"{widths['image_tokens']} x {widths['img_dim']}; random 0/1 labels"),
        "n_samples": len(samples),
        "n_proteins": int(samples["protein"].nunique()),
        "sample_lengths_min_max": [int(samples["length"].min()), int(samples["length"].max())],
        "reference_csv": str(csv),
        "reference_rows": len(ref),
        "reference_L_max": int(lengths.max()),
        "epochs": int(epochs),
        "seed": seed,
        "warmup": warmup,
        "isolated": isolate,
        "n_val_untimed": len(val_index),
        "authors": a,
        "corrected": c,
        "note": TRAINING_NOTE,
    }


LOADER_GOAL_CPU = 1000.0      # loader-only samples/s at paper shapes on the 2-core CPU


def loader_only(ds, cfg, device: str, *, seed: int = 0, min_seconds: float = 2.0, resident="auto") -> dict:
    """The corrected loop's batches delivered to the device with no model: samples/s (steady state).

    The features are loaded once (timed apart as ``load_seconds``); then whole epochs of batches
    are gathered by index until ``min_seconds`` have passed.
    """

    _sync(device)
    t0 = time.perf_counter()
    ds = ds.for_config(cfg)
    out = STORE_DTYPE if loop._amp_dtype(cfg, device) is not None else torch.float32  # as train_fusion does
    feats = datasets.features_on_device(ds, device, targets=cfg.targets, resident=resident, out_dtype=out)
    _sync(device)
    load = time.perf_counter() - t0
    pad_to = datasets.pad_length(cfg, ds)
    n, epochs, t0 = 0, 0, time.perf_counter()
    while True:
        epochs += 1
        for idx, w in datasets.epoch_batches(ds.seq_lengths, cfg, shuffle=True, seed=seed + epochs, pad_to=pad_to):
            img, seq, mask, y = feats.batch(torch.as_tensor(idx).to(device, non_blocking=True), w,
                                            reuse=not str(device).startswith("cuda"))
            n += len(idx)
        _sync(device)
        if time.perf_counter() - t0 >= min_seconds:
            break
    secs = time.perf_counter() - t0
    return {"loader_only_samples_per_s": n / secs, "samples": n, "epochs": epochs, "seconds": secs,
            "load_seconds": load, "resident": isinstance(feats, datasets.ResidentFeatures),
            "batch_dtype": str(img.dtype).replace("torch.", ""), "image_shape": list(img.shape[1:]),
            "goal_cpu": LOADER_GOAL_CPU}


def loader_only_throughput(reference=None, profile: str = "full", device: str = "cpu", n_samples: int = 512,
                           seed: int = 0, threads: int | None = None, min_seconds: float = 3.0,
                           workdir: str | os.PathLike | None = None) -> dict:
    """:func:`loader_only` at the profile's shapes (random features at the reference set's real lengths)."""
    if threads:
        torch.set_num_threads(threads)
    cfg_p = profiles.load_profile(profile)
    device = runtime.resolve_device(device)
    widths = encoder_widths(cfg_p)
    cfg = training_configs(cfg_p)["corrected"]
    rows = sample_rows(read_reference(reference_csv_path(reference)), n_samples, seed)
    with tempfile.TemporaryDirectory(prefix="proloc-bench-loader-", dir=workdir) as tmp:
        seq_path, img_path, samples = build_random_stores(rows, widths, tmp, LABELS, seed)
        ds = datasets.FusionDataset(samples, list(LABELS), EmbeddingStore(seq_path), EmbeddingStore(img_path))
        res = loader_only(ds, cfg, device, seed=seed, min_seconds=min_seconds)
    res.update(_machine(device, threads), profile=profile, feature_widths=widths, n_samples=len(samples),
               mean_sequence_length=float(samples["length"].mean()), batch_size=cfg.batch_size,
               goal_met_cpu=res["loader_only_samples_per_s"] >= LOADER_GOAL_CPU, random_features=True)
    return res


# -- 7. where the training step's time goes (torch.profiler) ----------------------------------------
def profile_training(reference=None, profile: str = "full", device: str = "auto", config_name: str = "corrected",
                     n_samples: int = 64, steps: int = 6, warmup: int = 3, batch_size: int | None = None,
                     top: int = 15, trace: str | os.PathLike | None = None,
                     workdir: str | os.PathLike | None = None) -> dict:
    """Profile ``steps`` training steps of one configuration at the profile's shapes (random features).

    CPU activities always; CUDA activities on a GPU. Returns the ``top`` operators by self time on
    the device that does the work (CUDA kernels on a GPU, CPU ops on a CPU), and which attention
    kernels ran (flash / memory-efficient / math).
    """
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    cfg_p = profiles.load_profile(profile)
    device = runtime.resolve_device(device)
    widths = encoder_widths(cfg_p)
    over = {"batch_size": batch_size} if batch_size else {}
    cfg = training_configs(cfg_p, epochs=1, batch_size_corrected=batch_size or 32)[config_name]
    if over:
        cfg = settings.TrainConfig.from_dict({**settings.train_config_dict(cfg), **over})
    rows = sample_rows(read_reference(reference_csv_path(reference)), n_samples, 0)
    cuda = device.startswith("cuda")
    with tempfile.TemporaryDirectory(prefix="proloc-bench-prof-", dir=workdir) as tmp:
        seq_path, img_path, samples = build_random_stores(rows, widths, tmp, LABELS, 0)
        ds = datasets.FusionDataset(samples, list(LABELS), EmbeddingStore(seq_path),
                                    EmbeddingStore(img_path)).for_config(cfg)
        run = loop._Run(loop.TrainJob(train_ds=ds, val_ds=ds, cfg=cfg), list(LABELS), device, None)
        out = STORE_DTYPE if loop._amp_dtype(cfg, device) is not None else torch.float32
        feats = datasets.features_on_device(ds, device, targets=cfg.targets, out_dtype=out)
        plan = [(torch.as_tensor(i).to(device), w) for i, w in run.plan(1)]
        plan = (plan * (1 + (warmup + steps) // max(1, len(plan))))[:warmup + steps]
        run.model.train()

        def one(i):
            idx, w = plan[i]
            run.step(*feats.batch(idx, w, reuse=not cuda))

        for i in range(warmup):
            one(i)
        _sync(device)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        t0 = time.perf_counter()
        with tprofile(activities=acts) as prof:
            for i in range(warmup, warmup + steps):
                one(i)
            _sync(device)
        wall = time.perf_counter() - t0
        samples_done = sum(len(plan[i][0]) for i in range(warmup, warmup + steps))
    if trace:
        prof.export_chrome_trace(str(trace))
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    avgs = [e for e in prof.key_averages() if getattr(e, key, 0) > 0]
    total = sum(getattr(e, key) for e in avgs) or 1.0
    avgs.sort(key=lambda e: getattr(e, key), reverse=True)
    names = {e.key for e in prof.key_averages()}
    attn = sorted(n for n in names if "attention" in n.lower() or "fmha" in n.lower() or "flash" in n.lower())
    return {"profile": profile, "config": config_name, **_machine(device), "steps": steps, "wall_seconds": wall,
            "samples_per_s": samples_done / wall, "batch_size": cfg.batch_size, "time_basis": key,
            "top_ops": [{"op": e.key, "self_ms": getattr(e, key) / 1e3, "calls": e.count,
                         "share": getattr(e, key) / total} for e in avgs[:top]],
            "attention_ops": attn, "random_features": True}


# how the seeds of one configuration step, by name (the TrainConfig execution switches): each
# gives the same result (tests/training) at its own speed
SEED_MODES = {"eager": {}, "stacked": {"stack_seeds": True}, "captured": {"capture_step": "always"},
              "stacked+captured": {"stack_seeds": True, "capture_step": "always"}}


def _with(cfg: settings.TrainConfig, **switches) -> settings.TrainConfig:
    return settings.TrainConfig.from_dict({**settings.train_config_dict(cfg), **switches})


def seeds_throughput(reference=None, profile: str = "full", device: str = "auto", *, config_name: str = "authors",
                     n_seeds: int = 5, n_samples: int = 96, epochs: int = 2, modes=("eager",),
                     workdir=None) -> dict:
    """The seeds of one configuration trained at once, in each of ``modes`` (:data:`SEED_MODES`:
    lockstep ``eager``, ``stacked`` into one model, each seed's step ``captured``, or both),
    against one seed alone, on random features at the profile's shapes: samples/s over all seeds.

    A mode's rate is its last epoch's (the loop's own clock: training steps only, compilation in
    the first epoch left out when ``epochs`` >= 2); ``call_seconds`` is the whole call's wall time,
    compilation included. Also: TFLOP/s against the device's peak, and what the profile's
    published seeds (its authors configuration: seeds x max_epochs x the Vislocas training images)
    would take at that rate. The published loop stays at batch 2 per seed in every mode.
    """
    unknown = [m for m in modes if m not in SEED_MODES]
    if unknown:
        raise ValueError(f"unknown seed modes {unknown} (known: {', '.join(SEED_MODES)})")
    cfg_p = profiles.load_profile(profile)
    device = runtime.resolve_device(device)
    widths = encoder_widths(cfg_p)
    cfg = training_configs(cfg_p, epochs=epochs)[config_name]
    rows = sample_rows(read_reference(reference_csv_path(reference)), n_samples, 0)
    labels = list(LABELS)
    peak, basis = device_peak_tflops(device)
    plan = cfg_p.plan
    published = plan.configs.get(config_name)
    with tempfile.TemporaryDirectory(prefix="proloc-bench-seeds-", dir=workdir) as tmp:
        seq_path, img_path, samples = build_random_stores(rows, widths, tmp, labels, 0)
        ds = datasets.FusionDataset(samples, labels, EmbeddingStore(seq_path), EmbeddingStore(img_path))
        short = ds.subset(samples.index[:cfg.batch_size])
        flops_per_sample = epoch_flops(ds, cfg, widths, 1, datasets.pad_length(cfg, ds)) / len(ds)
        loop.train_fusion(short, short, _with(cfg, max_epochs=1), labels, device, progress=False)   # warm-up

        def measure(k: int, mode: str) -> dict:
            _log(f"{config_name}: {k} seed(s), {mode}, {epochs} epoch(s) on {device}")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                _sync(device)
                t0 = time.perf_counter()
                out = loop.train_fusion_seeds(ds, short, _with(cfg, **SEED_MODES[mode]), labels, seeds=range(k),
                                              device=device, progress=False)
                _sync(device)
                wall = time.perf_counter() - t0
            last = out[0][1].iloc[-1]   # every run's history holds its share: n / share = all seeds' rate
            rate = float(last["samples_per_s"])
            tflops = rate * flops_per_sample / 1e12
            res = {"samples_per_s": rate, "call_seconds": wall, "achieved_tflops": tflops,
                   "fraction_of_peak": tflops / peak if peak else None,
                   "warnings": sorted({one_line(w.message) for w in caught
                                       if "stack_seeds" in str(w.message) or "capture_step" in str(w.message)})}
            if published is not None and k == n_seeds:
                secs = len(plan.seeds) * published.max_epochs * VISLOCAS_SIZES["train"] / rate
                res["published_seeds_hours"] = secs / 3600
            return res

        one = measure(1, "eager")
        by_mode = {m: measure(n_seeds, m) for m in modes}
    eager = by_mode.get("eager")
    best = max(by_mode, key=lambda m: by_mode[m]["samples_per_s"]) if by_mode else None
    return {"profile": profile, "config": config_name, **_machine(device), "n_seeds": n_seeds,
            "n_samples": len(ds), "epochs": epochs, "batch_size": cfg.batch_size,
            "padded_width": datasets.pad_length(cfg, ds),
            "train_gflop_per_sample": flops_per_sample / 1e9, "peak_tflops": peak, "peak_basis": basis,
            "samples_per_s_one_seed": one["samples_per_s"],
            "samples_per_s_all_seeds": eager["samples_per_s"] if eager else None,
            "speedup": eager["samples_per_s"] / one["samples_per_s"] if eager else None,
            "modes": by_mode, "best_mode": best,
            "speedup_best_over_one_seed": by_mode[best]["samples_per_s"] / one["samples_per_s"] if best else None,
            "published_seeds": {"seeds": len(plan.seeds), "max_epochs": published.max_epochs if published else None,
                                "train_images": VISLOCAS_SIZES["train"]},
            "random_features": True,
            "note": ("samples/s of the last epoch over all seeds (training steps only; compilation falls in the "
                     "first epoch); random features at the profile's shapes; one_seed: one seed, eager")}
