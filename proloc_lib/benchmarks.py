"""Benchmarks of the sequence feature store and of length-bucketed embedding (offline).

``python -m proloc_lib.embeddings bench`` prints one JSON object with three measurements:

1. **Store size** against the authors' layout. The published ProLoc-IHS code keeps one padded
   float32 ProtT5 matrix per *image row*: ``rows x L_max x 1024 x 4`` bytes, ``L_max`` being the
   longest sequence of the set. (Their code also keeps the ``</s>`` row, i.e. ``L_max + 1``; the
   headline ratio uses the smaller, conservative ``L_max`` and reports the other beside it.) Ours
   keeps each *unique* sequence once, float16, at its true length, plus a float16 mean vector.
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

``python -m proloc_lib.embeddings bench-training`` prints one JSON object on the **training
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

import argparse
import json
import multiprocessing
import os
import platform
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import config
from .embeddings import EmbeddingStore, STORE_DTYPE, length_buckets, store_size_bytes
from .sequences import clean_sequence, prott5_format, sequence_hash

REFERENCE_CSV = "proloc_ihs_test.csv"
PROTT5_HIDDEN = 1024          # ProtT5-XL-U50 per-residue width
AUTHORS_BYTES_PER_VALUE = 4   # float32
REPEAT_IF_UNDER_S = 20.0     # repeat a timing only when one run is shorter than this
GOALS = {"store_size_ratio": 50.0, "bucketing_speedup": 5.0}
NOTE = ("Timings and memory are machine-dependent (CPU model, thread count, other load). "
        "With random_weights true the model is the demo's tiny random-weight ProtT5-style encoder: "
        "the speedup shows the cost of padding on this architecture family, not ProtT5-XL throughput. "
        "Store sizes are exact byte counts from the reference set's real lengths and row counts.")


def _machine(device: str, threads: int | None = None) -> dict:
    """Where a benchmark ran: the fields every JSON report carries."""
    return {"device": device,
            "device_name": (torch.cuda.get_device_name() if device.startswith("cuda")
                            else platform.processor() or platform.machine()),
            "torch": torch.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "torch_threads": threads or torch.get_num_threads()}


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# -- reference set -------------------------------------------------------------------------------
def default_reference_dir() -> Path:
    return config.PROJECT_ROOT.parent / "shared" / "reference"


def reference_csv_path(reference: str | os.PathLike | None = None) -> Path:
    """The reference CSV: a file, a folder holding ``proloc_ihs_test.csv``, or the default folder."""
    path = Path(reference) if reference is not None else default_reference_dir()
    if path.is_dir():
        path = path / REFERENCE_CSV
    if not path.is_file():
        raise FileNotFoundError(f"reference CSV not found: {path} (pass --reference DIR or a CSV path)")
    return path


def read_reference(csv_path: str | os.PathLike) -> pd.DataFrame:
    """One row per image: ``protein`` (Ensembl id at the start of File Name) and clean ``sequence``."""
    df = pd.read_csv(csv_path)
    missing = sorted({"File Name", "Sequence"} - set(df.columns))
    if missing:
        raise ValueError(f"{csv_path}: missing column(s) {missing}")
    protein = df["File Name"].astype(str).str.split("-").str[0]
    seqs = [clean_sequence(s, where=f"{csv_path} row {i + 2}") for i, s in enumerate(df["Sequence"])]
    return pd.DataFrame({"protein": protein, "sequence": seqs})


def unique_sequences(df: pd.DataFrame) -> dict[str, str]:
    """{sequence hash: sequence}, in order of first appearance."""
    return {sequence_hash(s): s for s in dict.fromkeys(df["sequence"])}


# -- 1. store size -------------------------------------------------------------------------------
def store_size(reference_csv: str | os.PathLike, hidden_size: int = PROTT5_HIDDEN, shard_size: int = 256,
               workdir: str | os.PathLike | None = None) -> dict:
    """Bytes of the authors' padded per-image layout against a real store of ours (measured)."""
    df = read_reference(reference_csv)
    seqs = unique_sequences(df)
    lengths = [len(s) for s in seqs.values()]
    n_rows, l_max = len(df), max(lengths)
    authors = n_rows * l_max * hidden_size * AUTHORS_BYTES_PER_VALUE
    authors_eos = n_rows * (l_max + 1) * hidden_size * AUTHORS_BYTES_PER_VALUE
    itemsize = torch.finfo(STORE_DTYPE).bits // 8
    payload = (sum(lengths) + len(lengths)) * hidden_size * itemsize  # per-residue + one mean each
    with tempfile.TemporaryDirectory(prefix="proloc-bench-store-", dir=workdir) as tmp:
        store = EmbeddingStore.open(Path(tmp) / "store", {"benchmark": "store_size", "hidden_size": hidden_size},
                                    hidden_size, "sequence")
        keys = list(seqs)
        for start in range(0, len(keys), shard_size):
            store.commit({k: torch.zeros(len(seqs[k]), hidden_size, dtype=STORE_DTYPE)
                          for k in keys[start:start + shard_size]})
        n_stored = len(store.keys())
        ours = store_size_bytes(store.path)
        n_files = sum(1 for p in store.path.rglob("*") if p.is_file())
        store.close()
    if n_stored != len(seqs):
        raise RuntimeError(f"store holds {n_stored} keys, expected {len(seqs)}")
    return {
        "reference_csv": str(reference_csv),
        "n_rows": n_rows,
        "n_proteins": int(df["protein"].nunique()),
        "n_unique_sequences": len(seqs),
        "L_min": min(lengths),
        "L_max": l_max,
        "total_unique_residues": sum(lengths),
        "hidden_size": hidden_size,
        "authors_layout": "one float32 matrix per image row, padded to L_max: n_rows x L_max x hidden x 4 B",
        "authors_bytes": authors,
        "authors_bytes_with_end_token": authors_eos,
        "ours_layout": (f"one {str(STORE_DTYPE).replace('torch.', '')} matrix per unique sequence at its true "
                        "length + its mean vector, safetensors shards + store.json (measured on disk)"),
        "ours_payload_bytes": payload,
        "ours_bytes": ours,
        "ours_overhead_bytes": ours - payload,
        "ours_files": n_files,
        "store_size_ratio": authors / ours,
        "store_size_ratio_with_end_token": authors_eos / ours,
    }


# -- 2. padded vs bucketed embedding -------------------------------------------------------------
def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


@torch.inference_mode()
def embed_padded(encoder, seqs: list[str], pad_to: int, batch_size: int) -> list[torch.Tensor]:
    """The authors' way: fixed-size batches, every one padded to ``pad_to`` residues (+ ``</s>``).

    Same tokenizer, model and attention mask as :meth:`SequenceEncoder.embed_batch`; only the
    padding differs, so the per-residue outputs agree up to float rounding.
    """
    outs: list[torch.Tensor] = []
    for start in range(0, len(seqs), batch_size):
        batch = [clean_sequence(s) for s in seqs[start:start + batch_size]]
        too_long = [len(s) for s in batch if len(s) > pad_to]
        if too_long:
            raise ValueError(f"sequence of {max(too_long)} residues is longer than pad_to={pad_to}")
        enc = encoder.tokenizer([prott5_format(s) for s in batch], add_special_tokens=True,
                                padding="max_length", max_length=pad_to + 1, return_tensors="pt")
        if enc["input_ids"].shape[1] != pad_to + 1:
            raise RuntimeError(f"tokenizer padded to {enc['input_ids'].shape[1]}, expected {pad_to + 1}")
        for s, n in zip(batch, enc["attention_mask"].sum(dim=1).tolist()):
            if n != len(s) + 1:
                raise RuntimeError(f"tokenizer gave {n} tokens for a {len(s)}-residue sequence (expected {len(s) + 1})")
        hidden = encoder.model(input_ids=enc["input_ids"].to(encoder.device),
                               attention_mask=enc["attention_mask"].to(encoder.device)).last_hidden_state
        outs.extend(hidden[i, :len(s)].float().cpu() for i, s in enumerate(batch))
    return outs


@torch.inference_mode()
def embed_bucketed(encoder, seqs: list[str], token_budget: int) -> list[torch.Tensor]:
    """Ours: :func:`length_buckets` under ``token_budget``, each bucket padded to its own longest."""
    lengths = {str(i): len(s) for i, s in enumerate(seqs)}
    outs: dict[int, torch.Tensor] = {}
    for batch in length_buckets(lengths, token_budget):
        idx = [int(k) for k in batch]
        outs.update(zip(idx, encoder.embed_batch([seqs[i] for i in idx])))
    return [outs[i] for i in range(len(seqs))]


def _mode_shape(mode: str, seqs: list[str], token_budget: int, batch_size: int, pad_to: int) -> dict:
    """Batches and tokens (incl. padding and ``</s>``) that a mode feeds the model."""
    if mode == "padded":
        sizes = [len(seqs[i:i + batch_size]) for i in range(0, len(seqs), batch_size)]
        tokens = sum(n * (pad_to + 1) for n in sizes)
    else:
        lengths = {str(i): len(s) for i, s in enumerate(seqs)}
        buckets = length_buckets(lengths, token_budget)
        sizes = [len(b) for b in buckets]
        tokens = sum(len(b) * (max(lengths[k] for k in b) + 1) for b in buckets)
    real = sum(len(s) + 1 for s in seqs)
    return {"n_batches": len(sizes), "max_batch_size": max(sizes), "tokens_fed": tokens,
            "padding_fraction": 1 - real / tokens}


# -- 3. peak memory ------------------------------------------------------------------------------
def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory growth over a baseline taken at :meth:`start`, in MB.

    CUDA: ``max_memory_allocated`` after ``reset_peak_memory_stats``. CPU on Linux: the RSS
    high-water mark is reset (``/proc/self/clear_refs``) so the peak is that of the measured
    code alone; elsewhere ``ru_maxrss`` after minus ``ru_maxrss`` at the baseline.
    """

    def __init__(self, device: str):
        self.device = str(device)
        self.method = None
        self._base = 0

    def start(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            self.method = "torch.cuda.max_memory_allocated growth"
            return
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # reset the RSS high-water mark (Linux >= 4.0)
            self._base = _proc_status_kb("VmRSS") * 1024
            self.method = "RSS high-water mark growth (VmHWM after reset minus VmRSS at baseline)"
        except (OSError, TypeError):
            self._base = self._maxrss_bytes()
            self.method = "ru_maxrss growth over baseline after model load"

    @staticmethod
    def _maxrss_bytes() -> int:
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(r) if sys.platform == "darwin" else int(r) * 1024  # bytes on macOS, KiB on Linux

    def peak_mb(self) -> float:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        elif self.method.startswith("RSS"):
            peak = (_proc_status_kb("VmHWM") or 0) * 1024
        else:
            peak = self._maxrss_bytes()
        return max(0, peak - self._base) / 2**20


def measure_mode(mode: str, encoder, seqs: list[str], token_budget: int, batch_size: int,
                 pad_to: int | None = None, repeats: int = 2, keep_outputs: bool = False,
                 max_repeat_seconds: float = REPEAT_IF_UNDER_S) -> dict:
    """Time one mode and its peak memory, after a warm-up on the shortest sequence.

    Best of up to ``repeats`` runs; a run longer than ``max_repeat_seconds`` is not repeated
    (repeats only pay off where one run is short enough to be noisy).
    """
    if mode not in ("padded", "bucketed"):
        raise ValueError(f"mode must be 'padded' or 'bucketed', got '{mode}'")
    pad_to = pad_to or max(len(s) for s in seqs)
    encoder.embed_batch([min(seqs, key=len)])  # warm-up (same for both modes)
    mem = PeakMemory(encoder.device)
    mem.start()
    times, outs = [], None
    for _ in range(max(1, repeats)):
        if times and times[-1] > max_repeat_seconds:
            break
        outs = None  # free the previous repeat's outputs before the next one
        _sync(encoder.device)
        t0 = time.perf_counter()
        if mode == "padded":
            outs = embed_padded(encoder, seqs, pad_to, batch_size)
        else:
            outs = embed_bucketed(encoder, seqs, token_budget)
        _sync(encoder.device)
        times.append(time.perf_counter() - t0)
    peak = mem.peak_mb()
    best = min(times)
    n_res = sum(len(s) for s in seqs)
    res = {"mode": mode, "seconds": best, "seconds_all": times, "residues_per_s": n_res / best,
           "sequences_per_s": len(seqs) / best, "peak_mem_mb": peak, "peak_mem_method": mem.method,
           **_mode_shape(mode, seqs, token_budget, batch_size, pad_to)}
    if mode == "padded":
        res.update(batch_size=batch_size, pad_to=pad_to)
    else:
        res.update(token_budget=token_budget)
    if keep_outputs:
        res["outputs"] = outs
    return res


def max_abs_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def _speedup(padded: dict, bucketed: dict) -> dict:
    # best-of timings can differ in count (a long run is not repeated): the first-run ratio, both
    # after the same warm-up, is given beside the headline so neither mode gets an extra chance
    return {"bucketing_speedup": padded["seconds"] / bucketed["seconds"],
            "bucketing_speedup_first_runs": padded["seconds_all"][0] / bucketed["seconds_all"][0],
            "peak_mem_mb_padded": padded["peak_mem_mb"], "peak_mem_mb_bucketed": bucketed["peak_mem_mb"]}


def bucketing(sequences, encoder, token_budget: int, batch_size_padded: int = 8, repeats: int = 2,
              max_repeat_seconds: float = REPEAT_IF_UNDER_S) -> dict:
    """Both modes in this process on the same sequences and encoder (see :func:`run` for isolation)."""
    seqs = list(sequences.values()) if isinstance(sequences, dict) else list(sequences)
    pad_to = max(len(s) for s in seqs)
    common = dict(pad_to=pad_to, repeats=repeats, keep_outputs=True, max_repeat_seconds=max_repeat_seconds)
    padded = measure_mode("padded", encoder, seqs, token_budget, batch_size_padded, **common)
    outs = padded.pop("outputs")
    bucketed = measure_mode("bucketed", encoder, seqs, token_budget, batch_size_padded, **common)
    outs_b = bucketed.pop("outputs")
    return {"padded": padded, "bucketed": bucketed, **_speedup(padded, bucketed),
            "padded_vs_bucketed_max_abs_diff": max_abs_diff(outs, outs_b), "isolated": False}


def _fairness_check(encoder, seqs: list[str], padded_outs: list[torch.Tensor], n_check: int) -> float:
    """Max |difference| between the padded outputs and embed_batch for the ``n_check`` shortest sequences."""
    idx = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))[:n_check]
    ref = embed_bucketed(encoder, [seqs[i] for i in idx], token_budget=10**9)
    return max_abs_diff([padded_outs[i] for i in idx], ref)


def _mode_worker(job: dict) -> dict:
    """Runs in a fresh (spawned) process: load the encoder, measure one mode."""
    from .encoders import load_sequence_encoder

    torch.set_num_threads(job["threads"])
    encoder = load_sequence_encoder(job["model_cfg"], device=job["device"], cache_dir=job["cache_dir"])
    res = measure_mode(job["mode"], encoder, job["seqs"], job["token_budget"], job["batch_size"],
                       job["pad_to"], job["repeats"], keep_outputs=job["mode"] == "padded",
                       max_repeat_seconds=job["max_repeat_seconds"])
    if job["mode"] == "padded":
        outs = res.pop("outputs")
        res["padded_vs_bucketed_max_abs_diff"] = _fairness_check(encoder, job["seqs"], outs, job["n_check"])
    return res


def bucketing_isolated(seqs: list[str], model_cfg: dict, device: str, token_budget: int, batch_size_padded: int = 8,
                       repeats: int = 2, cache_dir: str | None = None, n_check: int = 4,
                       max_repeat_seconds: float = REPEAT_IF_UNDER_S) -> dict:
    """Both modes, each in its own fresh spawned process (clean peak-memory figures)."""
    ctx = multiprocessing.get_context("spawn")
    job = {"model_cfg": model_cfg, "device": device, "cache_dir": cache_dir, "seqs": list(seqs),
           "token_budget": token_budget, "batch_size": batch_size_padded, "pad_to": max(len(s) for s in seqs),
           "repeats": repeats, "threads": torch.get_num_threads(), "n_check": n_check,
           "max_repeat_seconds": max_repeat_seconds}
    res = {}
    for mode in ("padded", "bucketed"):
        _log(f"{mode}: fresh process, {len(seqs)} sequences, "
             + (f"batches of {batch_size_padded} padded to {job['pad_to']}" if mode == "padded"
                else f"token budget {token_budget}"))
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            res[mode] = pool.submit(_mode_worker, dict(job, mode=mode)).result()
        _log(f"{mode}: best {res[mode]['seconds']:.2f} s of {res[mode]['seconds_all']}")
    diff = res["padded"].pop("padded_vs_bucketed_max_abs_diff")
    return {"padded": res["padded"], "bucketed": res["bucketed"], **_speedup(res["padded"], res["bucketed"]),
            "padded_vs_bucketed_max_abs_diff": diff, "fairness_check_sequences": n_check, "isolated": True}


# -- driver --------------------------------------------------------------------------------------
def _preflight(model_cfg: dict, cache_dir: str | None) -> None:
    """Fail in seconds, in this process, when a pretrained model can be neither found nor downloaded."""
    from . import encoders as E

    if not model_cfg.get("pretrained"):
        return
    model_id, revision = str(model_cfg["model"]), str(model_cfg.get("revision", "main"))
    cached = (E._cached_file(model_id, ["config.json"], revision, cache_dir)
              and E._cached_file(model_id, ["spiece.model"], revision, cache_dir)
              and E._cached_file(model_id, ["model.safetensors", "pytorch_model.bin"], revision, cache_dir))
    if not cached:
        E._ensure_downloadable(model_id, "sequence model")


def run(reference=None, device: str = "auto", profile: str = "demo", model_cfg: dict | None = None,
        token_budget: int | None = None, batch_size_padded: int = 8, repeats: int = 2, isolate: bool = True,
        full_model: bool = False, cache_dir: str | None = None) -> dict:
    """All three benchmarks on the reference set; returns one JSON-ready dict."""
    if full_model and model_cfg is None:
        profile = "full"
    cfg = config.load_profile(profile)
    model_cfg = dict(model_cfg or cfg["embeddings"]["sequence"])
    token_budget = int(token_budget or cfg["embeddings"]["token_budget"])
    device = config.resolve_device(device)
    _preflight(model_cfg, cache_dir)  # before anything slow

    csv = reference_csv_path(reference)
    _log(f"store size from {csv}")
    size = store_size(csv)
    _log(f"store: authors {size['authors_bytes'] / 1e9:.2f} GB, ours {size['ours_bytes'] / 1e6:.1f} MB, "
         f"ratio {size['store_size_ratio']:.1f}x")

    seqs = list(unique_sequences(read_reference(csv)).values())
    if isolate:
        bench = bucketing_isolated(seqs, model_cfg, device, token_budget, batch_size_padded, repeats, cache_dir)
    else:
        from .encoders import load_sequence_encoder

        encoder = load_sequence_encoder(model_cfg, device=device, cache_dir=cache_dir)
        bench = bucketing(seqs, encoder, token_budget, batch_size_padded, repeats)
    _log(f"bucketing speedup {bench['bucketing_speedup']:.2f}x")

    out = {
        "store_size_ratio": size["store_size_ratio"],
        "bucketing_speedup": bench["bucketing_speedup"],
        "bucketing_speedup_first_runs": bench["bucketing_speedup_first_runs"],
        "peak_mem_mb_padded": bench["peak_mem_mb_padded"],
        "peak_mem_mb_bucketed": bench["peak_mem_mb_bucketed"],
        "goals": GOALS,
        "goals_met": {"store_size_ratio": size["store_size_ratio"] >= GOALS["store_size_ratio"],
                      "bucketing_speedup": bench["bucketing_speedup"] >= GOALS["bucketing_speedup"]},
        "model": model_cfg["model"],
        "model_config": model_cfg,
        "random_weights": not model_cfg["pretrained"],
        "profile": profile,
        **_machine(device),
        "token_budget": token_budget,
        "batch_size_padded": batch_size_padded,
        "repeats": repeats,
        "repeat_if_under_s": REPEAT_IF_UNDER_S,
        "n_sequences": len(seqs),
        "truncation": "none: full-length sequences in both modes",
        "store": size,
        "bucketing": bench,
        "note": NOTE,
    }
    return out


# -- 4. training throughput: the authors' loop against the corrected one ------------------------
VIT_TOKENS = 197              # ViT-B/16 at 224 px: 196 patches + CLS (per crop)
VIT_B_HIDDEN = 768            # timm vit_base_patch16_224 width
TRAINING_GOAL = 20.0          # corrected / authors samples per second
TRAINING_NOTE = ("Timings and memory are machine-dependent (CPU model, thread count, other load, GPU). "
                 "Features are RANDOM float16 tensors of the profile's encoder widths at the reference set's "
                 "real sequence lengths: training throughput depends on the shapes, not on the values, so these "
                 "numbers say nothing about accuracy. Both loops run the production train_fusion with the same "
                 "d_model / n_heads / n_blocks on the same samples; the validation pass is not timed. On CPU mixed "
                 "precision is off (amp applies on CUDA only), so there the gain comes from length bucketing and "
                 "the larger batch alone.")
SIZE_KEYS = ("d_model", "n_heads", "n_blocks")


def encoder_widths(profile_cfg: dict) -> dict:
    """Per-residue and per-image-token widths and image tokens per sample of a profile's encoders.

    Random-weight encoders give them in their config (demo: ``sequence.config.d_model``,
    ``image.overrides.embed_dim``); pretrained ones are ProtT5-XL (1024) and ViT-B/16 (768).
    """
    emb = profile_cfg["embeddings"]
    seq = (emb["sequence"].get("config") or {}).get("d_model", PROTT5_HIDDEN)
    img = (emb["image"].get("overrides") or {}).get("embed_dim", VIT_B_HIDDEN)
    grid = int(emb.get("crop_grid", 1) or 1)
    return {"seq_dim": int(seq), "img_dim": int(img), "image_tokens": VIT_TOKENS * grid * grid}


def sample_rows(ref: pd.DataFrame, n_samples: int, seed: int = 0) -> pd.DataFrame:
    """``n_samples`` image rows of the reference table (seeded), one row of the longest protein included.

    That row makes the training set's longest sequence the reference set's longest, the length
    the authors padded every sequence to. Without replacement when ``n_samples`` <= rows.
    """
    if n_samples < 1:
        raise ValueError("n_samples must be >= 1")
    ref = ref.reset_index(drop=True).assign(length=lambda d: d["sequence"].str.len())
    rng = np.random.default_rng(seed)
    longest = int(ref["length"].idxmax())
    rest = np.array([i for i in range(len(ref)) if i != longest])
    k = n_samples - 1
    picked = rng.choice(rest, size=k, replace=k > len(rest)) if k and len(rest) else np.array([], dtype=int)
    if k and not len(rest):
        picked = np.full(k, longest)
    order = rng.permutation(np.concatenate([[longest], picked]).astype(int))
    return ref.iloc[order].reset_index(drop=True).rename_axis("sample").reset_index()


def build_random_stores(rows: pd.DataFrame, widths: dict, root: str | os.PathLike, labels: list[str],
                        seed: int = 0, shard_size: int = 256) -> tuple[Path, Path, pd.DataFrame]:
    """Sequence and image :class:`EmbeddingStore` folders of random float16 features, and the sample table.

    One sequence tensor per unique sequence (its true length x ``seq_dim``), one image tensor per
    sample (``image_tokens x img_dim``); labels are random 0/1. Returns (sequence store, image
    store, samples with ``image_id``, ``seq_hash``, ``length`` and the label columns).
    """
    gen = torch.Generator().manual_seed(seed)
    root = Path(root)
    seq_store = EmbeddingStore.open(root / "sequences", {"benchmark": "training", "random": True, "seed": seed},
                                    widths["seq_dim"], "sequence")
    img_store = EmbeddingStore.open(root / "images", {"benchmark": "training", "random": True, "seed": seed},
                                    widths["img_dim"], "image")
    samples = pd.DataFrame({"image_id": [f"sample-{i:05d}" for i in rows["sample"]],
                            "seq_hash": [sequence_hash(s) for s in rows["sequence"]],
                            "protein": rows["protein"].to_numpy(), "length": rows["length"].to_numpy()})
    y = torch.randint(0, 2, (len(samples), len(labels)), generator=gen)
    for j, lab in enumerate(labels):
        samples[lab] = y[:, j].numpy().astype(np.float32)
        samples["image_label:" + lab] = samples[lab]  # the image rows' own labels (targets="image"), the same here
    seqs = dict(zip(samples["seq_hash"], samples["length"]))
    for items, store, shape in ((list(seqs.items()), seq_store, lambda n: (n, widths["seq_dim"])),
                                ([(k, None) for k in samples["image_id"]], img_store,
                                 lambda _: (widths["image_tokens"], widths["img_dim"]))):
        for start in range(0, len(items), shard_size):
            store.commit({k: torch.randn(*shape(v), generator=gen).to(STORE_DTYPE)
                          for k, v in items[start:start + shard_size]})
        store.close()
    return seq_store.path, img_store.path, samples


def loader_stats(ds, cfg, seed: int) -> dict:
    """What :func:`training.make_loader` feeds the model in one epoch (index lists only, no data read).

    The widths are those ``collate`` pads to: the batch's longest, or ``pad_to`` (the training
    set's longest) under the authors' global padding. Epoch ``e`` of train_fusion uses
    ``seed + e``, so ``seed + 1`` describes its first epoch exactly.
    """
    from . import training

    loader = training.make_loader(ds, cfg, True, seed)
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


def _samples_digest(samples: pd.DataFrame) -> str:
    text = "\n".join(sorted(f"{a}:{b}" for a, b in zip(samples["image_id"], samples["seq_hash"])))
    return sequence_hash(text) if text else ""


def _train_worker(job: dict) -> dict:
    """One training loop (fresh spawned process, or this one): warm-up, then one timed train_fusion."""
    from . import training

    torch.set_num_threads(job["threads"])
    seq_store, img_store = EmbeddingStore(job["seq_store"]), EmbeddingStore(job["img_store"])
    samples, labels, cfg, device = job["samples"], job["labels"], job["cfg"], job["device"]
    train_ds = training.FusionDataset(samples, labels, seq_store, img_store)
    val_ds = training.FusionDataset(samples.loc[job["val_index"]], labels, seq_store, img_store)
    if job["warmup"]:  # library initialisation off the clock: one step on the shortest rows
        short = samples.loc[samples["length"].sort_values(kind="stable").index[:min(cfg.batch_size, len(samples))]]
        short_ds = training.FusionDataset(short, labels, seq_store, img_store)
        one = training.TrainConfig.from_dict({**training.train_config_dict(cfg), "max_epochs": 1})
        training.train_fusion(short_ds, short_ds, one, labels, device, job["seed"], progress=False)
    mem = PeakMemory(device)
    mem.start()
    model, hist = training.train_fusion(train_ds, val_ds, cfg, labels, device, job["seed"], progress=False)
    peak = mem.peak_mb()
    hist = hist.to_dict(orient="records")
    last = hist[-1]
    flops = epoch_flops(train_ds, cfg, job["widths"], job["seed"] + len(hist), training.pad_length(cfg, train_ds))
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


def _load_average() -> float | None:
    """The 1-minute load average (other processes on a shared machine skew timings)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def training_configs(profile_cfg: dict, epochs: int = 1, batch_size_corrected: int = 32,
                     size_overrides: dict | None = None) -> dict:
    """``{"authors": TrainConfig, "corrected": TrainConfig}`` of one model size (the profile's base sizes)."""
    from . import training

    base = {k: v for k, v in (profile_cfg.get("training", {}).get("base") or {}).items() if k in SIZE_KEYS}
    base.update(size_overrides or {})
    common = {"max_epochs": int(epochs), "patience": None}
    cfgs = {"authors": training.make_config("authors", base, **common),
            "corrected": training.make_config("corrected", base, batch_size=int(batch_size_corrected), **common)}
    sizes = {name: tuple(getattr(c, k) for k in SIZE_KEYS) for name, c in cfgs.items()}
    if len(set(sizes.values())) != 1:
        raise RuntimeError(f"model sizes differ between the configurations: {sizes}")
    return cfgs


def training_throughput(reference=None, profile: str = "demo", device: str = "auto", n_samples: int = 96,
                        epochs: int = 1, seed: int = 0, batch_size_corrected: int = 32,
                        size_overrides: dict | None = None, isolate: bool = True, warmup: bool = True,
                        n_val: int = 2, threads: int | None = None,
                        workdir: str | os.PathLike | None = None) -> dict:
    """Samples/s and peak memory of the authors' training loop against the corrected one (JSON-ready).

    ``size_overrides`` (d_model, n_heads, n_blocks) apply to both configurations alike. The
    headline ``samples_per_s`` of each is its last epoch's, as train_fusion measures it (the
    training loop only, validation excluded). With ``isolate`` each loop runs in a fresh
    spawned process; otherwise both run here (faster; rougher memory figures). ``threads``: CPU
    threads of each loop (default: torch's); on a loaded machine 1 avoids OpenMP oversubscription.
    """
    from . import training
    from .labels import LABELS

    load_before = _load_average()
    cfg = config.load_profile(profile)
    device = config.resolve_device(device)
    widths = encoder_widths(cfg)
    cfgs = training_configs(cfg, epochs, batch_size_corrected, size_overrides)
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
                    res[name] = pool.submit(_train_worker, dict(job, cfg=tcfg, loader_only=name == "corrected")).result()
            else:
                before = torch.get_num_threads()
                try:
                    res[name] = _train_worker(dict(job, cfg=tcfg, loader_only=name == "corrected"))
                finally:
                    torch.set_num_threads(before)
            res[name]["config"] = training.train_config_dict(tcfg)
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


# -- 5. loader-only throughput, FLOPs and the device's peak ---------------------------------------
# Dense tensor-core peaks (TFLOP/s, bf16/fp16, no sparsity) from the vendors' data sheets, by name.
PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0,
               "A10G": 70.0, "T4": 65.0, "V100": 125.0}
LOADER_GOAL_CPU = 1000.0      # loader-only samples/s at paper shapes on the 2-core CPU


def device_peak_tflops(device: str) -> tuple[float | None, str]:
    """(peak TFLOP/s, basis) of a CUDA device by name; (None, why) where unknown (CPUs)."""
    if not str(device).startswith("cuda"):
        return None, "CPU: no peak figure"
    name = torch.cuda.get_device_name()
    for key, peak in PEAK_TFLOPS.items():
        if key in name:
            return peak, f"{key} dense bf16/fp16 tensor-core peak (data sheet)"
    return None, f"{name}: peak unknown"


def forward_flops(cfg, widths: dict, batch: int, width: int) -> float:
    """Multiply-adds x 2 of one forward pass of the fusion model (matmuls and attention only)."""
    d, t, ff = cfg.d_model, widths["image_tokens"], cfg.ff_mult
    q, kv = (t, width) if cfg.query == "image" else (width, t)
    proj = 2 * t * widths["img_dim"] * d + 2 * width * widths["seq_dim"] * d
    cross = 2 * q * d * d + 4 * kv * d * d + 4 * q * kv * d + 2 * q * d * d
    block = 8 * q * d * d + 4 * q * q * d + 4 * q * d * ff * d
    return float(batch * (proj + cross + cfg.n_blocks * block))


def epoch_flops(ds, cfg, widths: dict, seed: int, pad_to: int | None = None) -> float:
    """Training FLOPs of one epoch (forward x 3 for forward + backward) over the batches it feeds."""
    from . import training

    return sum(3 * forward_flops(cfg, widths, len(i), w)
               for i, w in training.epoch_batches(ds.seq_lengths, cfg, shuffle=True, seed=seed, pad_to=pad_to))


def loader_only(ds, cfg, device: str, *, seed: int = 0, min_seconds: float = 2.0, resident="auto") -> dict:
    """The corrected loop's batches delivered to the device with no model: samples/s (steady state).

    The features are loaded once (timed apart as ``load_seconds``); then whole epochs of batches
    are gathered by index until ``min_seconds`` have passed.
    """
    from . import training

    _sync(device)
    t0 = time.perf_counter()
    out = STORE_DTYPE if training._amp_dtype(cfg, device) is not None else torch.float32  # as train_fusion does
    feats = training.features_on_device(ds, device, targets=cfg.targets, resident=resident, out_dtype=out)
    _sync(device)
    load = time.perf_counter() - t0
    pad_to = training.pad_length(cfg, ds)
    n, epochs, t0 = 0, 0, time.perf_counter()
    while True:
        epochs += 1
        for idx, w in training.epoch_batches(ds.seq_lengths, cfg, shuffle=True, seed=seed + epochs, pad_to=pad_to):
            img, seq, mask, y = feats.batch(torch.as_tensor(idx).to(device, non_blocking=True), w,
                                            reuse=not str(device).startswith("cuda"))
            n += len(idx)
        _sync(device)
        if time.perf_counter() - t0 >= min_seconds:
            break
    secs = time.perf_counter() - t0
    return {"loader_only_samples_per_s": n / secs, "samples": n, "epochs": epochs, "seconds": secs,
            "load_seconds": load, "resident": isinstance(feats, training.ResidentFeatures),
            "batch_dtype": str(img.dtype).replace("torch.", ""), "image_shape": list(img.shape[1:]),
            "goal_cpu": LOADER_GOAL_CPU}


def loader_only_throughput(reference=None, profile: str = "full", device: str = "cpu", n_samples: int = 512,
                           seed: int = 0, threads: int | None = None, min_seconds: float = 3.0,
                           workdir: str | os.PathLike | None = None) -> dict:
    """:func:`loader_only` at the profile's shapes (random features at the reference set's real lengths)."""
    from . import training
    from .labels import LABELS

    if threads:
        torch.set_num_threads(threads)
    cfg_p = config.load_profile(profile)
    device = config.resolve_device(device)
    widths = encoder_widths(cfg_p)
    cfg = training_configs(cfg_p)["corrected"]
    rows = sample_rows(read_reference(reference_csv_path(reference)), n_samples, seed)
    with tempfile.TemporaryDirectory(prefix="proloc-bench-loader-", dir=workdir) as tmp:
        seq_path, img_path, samples = build_random_stores(rows, widths, tmp, LABELS, seed)
        ds = training.FusionDataset(samples, list(LABELS), EmbeddingStore(seq_path), EmbeddingStore(img_path))
        res = loader_only(ds, cfg, device, seed=seed, min_seconds=min_seconds)
    res.update(_machine(device, threads), profile=profile, feature_widths=widths, n_samples=len(samples),
               mean_sequence_length=float(samples["length"].mean()), batch_size=cfg.batch_size,
               goal_met_cpu=res["loader_only_samples_per_s"] >= LOADER_GOAL_CPU, random_features=True)
    return res


# -- 6. dry run: the runs of a profile and their estimated time on this device ------------------
VISLOCAS_SIZES = {"train": 4652, "val": 517, "test": 566}  # unique images; val = 10% carved from train
PAPER_LENGTH = 600


def _probe_step_seconds(cfg, widths: dict, device: str, width: int, batch: int, steps: int = 2) -> float:
    """Seconds per training step of ``cfg`` at (batch, width) on ``device``: one untimed step, then ``steps``."""
    from . import training

    torch.manual_seed(0)
    model = training.build_model(cfg, widths["seq_dim"], widths["img_dim"], 5).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    img = torch.randn(batch, widths["image_tokens"], widths["img_dim"], device=device)
    seq = torch.randn(batch, width, widths["seq_dim"], device=device)
    mask = torch.ones(batch, width, dtype=torch.bool, device=device)
    y = torch.randint(0, 2, (batch, 5), device=device).float()
    lossf = training.loss_fn(cfg, 4)
    times = []
    for k in range(steps + 1):
        _sync(device)
        t0 = time.perf_counter()
        with training._autocast(cfg, device):
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
        d = config.stage_dir(profile, "01_data_assembly", data_root)
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
    from . import training

    cfg_p = config.load_profile(profile)
    device = config.resolve_device(device)
    widths = encoder_widths(cfg_p)
    section = cfg_p.get("training", {})
    runs = training.training_plan(section)
    lengths, length_source = _dry_lengths(profile, data_root, reference)
    rng = np.random.default_rng(0)
    n_tr = int(n_train or VISLOCAS_SIZES["train"])
    n_va = int(n_val or VISLOCAS_SIZES["val"])
    tr_len, va_len = rng.choice(lengths, n_tr), rng.choice(lengths, n_va)
    cv = section.get("cross_validation")
    if cv:
        k = int(cfg_p.get("data", {}).get("split", {}).get("folds", 5) or 5)
        cv_cfg = training.make_config(cv["config"], section.get("base"),
                                      **(section.get("configurations") or {}).get(cv["config"], {}))
        runs += [{"model": f"cv.{cv['config']} fold {f}", "config": cv["config"], "seed": 0, "train": cv_cfg}
                 for f in range(k)]
    control = section.get("control", True)   # the label-permutation control (experiments.run_permutation_control)
    if control:
        name = control.get("config", "corrected") if isinstance(control, dict) else "corrected"
        runs.append({"model": "control.permuted_labels", "config": name, "seed": 0,
                     "train": training.make_config(name, section.get("base"),
                                                   **(section.get("configurations") or {}).get(name, {}))})
    for rs in training.resplit_plan(section):
        c = training.make_config(rs["config"], section.get("base"),
                                 **(section.get("configurations") or {}).get(rs["config"], {}))
        runs += [{"model": f"resplit.{rs['method']}.{rs['config']}", "config": rs["config"], "seed": s, "train": c}
                 for s in rs["seeds"]]
    probes: dict[str, float] = {}
    out_runs, total = [], 0.0
    for r in runs:
        c = r["train"]
        plan = training.epoch_batches(tr_len, c, shuffle=True, seed=0,
                                      pad_to=None if c.padding == "batch" else int(tr_len.max()))
        widths_used = [w for _, w in plan]
        width = int(np.median(widths_used))
        batch = c.batch_size if device.startswith("cuda") else min(c.batch_size, probe_batch_cpu)
        key = f"{c.hash()}:{width}:{batch}"
        if key not in probes:
            _log(f"probe {r['model']}: batch {batch} x {width} residues on {device}")
            probes[key] = _probe_step_seconds(c, widths, device, width, batch)
        per_sample = probes[key] / batch
        train_s = per_sample * n_tr
        val_s = per_sample / 3 * n_va  # forward only
        secs = c.max_epochs * (train_s + val_s)
        total += secs
        out_runs.append({"run": r["model"], "config": r["config"], "seed": r["seed"], "epochs_max": c.max_epochs,
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
    from torch.profiler import ProfilerActivity, profile as tprofile

    from . import training
    from .labels import LABELS

    cfg_p = config.load_profile(profile)
    device = config.resolve_device(device)
    widths = encoder_widths(cfg_p)
    over = {"batch_size": batch_size} if batch_size else {}
    cfg = training_configs(cfg_p, epochs=1, batch_size_corrected=batch_size or 32)[config_name]
    if over:
        cfg = training.TrainConfig.from_dict({**training.train_config_dict(cfg), **over})
    rows = sample_rows(read_reference(reference_csv_path(reference)), n_samples, 0)
    cuda = device.startswith("cuda")
    with tempfile.TemporaryDirectory(prefix="proloc-bench-prof-", dir=workdir) as tmp:
        seq_path, img_path, samples = build_random_stores(rows, widths, tmp, LABELS, 0)
        ds = training.FusionDataset(samples, list(LABELS), EmbeddingStore(seq_path), EmbeddingStore(img_path))
        run = training._Run(training.TrainJob(train_ds=ds, val_ds=ds, cfg=cfg), list(LABELS), device, None)
        out = STORE_DTYPE if training._amp_dtype(cfg, device) is not None else torch.float32
        feats = training.features_on_device(ds, device, targets=cfg.targets, out_dtype=out)
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


def seeds_throughput(reference=None, profile: str = "full", device: str = "auto", *, config_name: str = "authors",
                     n_seeds: int = 5, n_samples: int = 96, epochs: int = 1, workdir=None) -> dict:
    """Several seeds at once (``training.train_fusion_seeds``: threads on the CPU, lockstep on CUDA
    streams) against one seed, on random features at the profile's shapes: samples/s over all seeds.

    The published loop stays at batch 2 per model; what a device gains from training its seeds
    together is ``speedup`` (all seeds' samples/s over one seed's). A one-step warm-up runs first.
    """
    from . import training
    from .labels import LABELS

    cfg_p = config.load_profile(profile)
    device = config.resolve_device(device)
    cfg = training_configs(cfg_p, epochs=epochs)[config_name]
    rows = sample_rows(read_reference(reference_csv_path(reference)), n_samples, 0)
    labels = list(LABELS)
    with tempfile.TemporaryDirectory(prefix="proloc-bench-seeds-", dir=workdir) as tmp:
        seq_path, img_path, samples = build_random_stores(rows, encoder_widths(cfg_p), tmp, labels, 0)
        ds = training.FusionDataset(samples, labels, EmbeddingStore(seq_path), EmbeddingStore(img_path))
        short = ds.subset(samples.index[:cfg.batch_size])
        one_step = training.TrainConfig.from_dict({**training.train_config_dict(cfg), "max_epochs": 1})
        training.train_fusion(short, short, one_step, labels, device, progress=False)   # warm-up
        rates = {}
        for k in (1, n_seeds):
            _sync(device)
            t0 = time.perf_counter()
            training.train_fusion_seeds(ds, short, cfg, labels, seeds=range(k), device=device, progress=False)
            _sync(device)
            rates[k] = k * len(ds) * cfg.max_epochs / (time.perf_counter() - t0)
    return {"profile": profile, "config": config_name, **_machine(device), "n_seeds": n_seeds,
            "n_samples": len(ds), "epochs": cfg.max_epochs, "batch_size": cfg.batch_size,
            "samples_per_s_one_seed": rates[1], "samples_per_s_all_seeds": rates[n_seeds],
            "speedup": rates[n_seeds] / rates[1], "random_features": True,
            "note": "wall time of whole calls (validation on a one-batch set included); random features"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m proloc_lib.benchmarks",
        description="Feature-store, sequence-embedding and training-loop benchmarks, and the dry run (offline).")
    sub = parser.add_subparsers(dest="command")
    b = sub.add_parser("bench", help="store size, padded vs bucketed throughput, peak memory; prints JSON")
    b.add_argument("--reference", default=None,
                   help=f"folder with {REFERENCE_CSV}, or a CSV of that format (default: {default_reference_dir()})")
    b.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    b.add_argument("--profile", default="demo", help="profile whose sequence encoder and token budget to use")
    b.add_argument("--full-model", action="store_true",
                   help="configs/full.yaml's ProtT5-XL (needs the network or a local HF cache; best on a GPU)")
    b.add_argument("--token-budget", type=int, default=None, help="residues per bucket (default: the profile's)")
    b.add_argument("--batch-size", type=_count, default=8, help="batch size of the padded (authors') mode")
    b.add_argument("--repeats", type=_count, default=2, help="timed repeats per mode (best is kept)")
    b.add_argument("--no-isolate", action="store_true", help="run both modes in this process (faster, rougher memory)")
    b.add_argument("--cache-dir", default=None, help="model / tiny-vocabulary cache folder")
    b.add_argument("--out", default=None, help="also write the JSON to this file")
    t = sub.add_parser("bench-training",
                       help="authors' vs corrected training loop: samples/s, peak memory; prints JSON")
    _shape_options(t, profile="demo")
    t.add_argument("--n-samples", type=_count, default=96, help="image rows sampled from the reference set")
    t.add_argument("--epochs", type=_count, default=1, help="timed epochs (the last one is reported)")
    t.add_argument("--batch-size", type=_count, default=32, help="batch size of the corrected loop")
    t.add_argument("--n-blocks", type=int, default=None, help="override n_blocks for both loops")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=_count, default=None, help="CPU threads per loop (default: torch's)")
    t.add_argument("--no-isolate", action="store_true", help="run both loops in this process (rougher memory)")
    t.add_argument("--no-warmup", action="store_true", help="skip the untimed one-step warm-up")
    t.add_argument("--out", default=None, help="also write the JSON to this file")
    lo = sub.add_parser("bench-loader", help="loader-only samples/s at the profile's shapes (no model); prints JSON")
    _shape_options(lo, profile="full")
    lo.add_argument("--n-samples", type=_count, default=512)
    lo.add_argument("--threads", type=_count, default=None)
    lo.add_argument("--out", default=None)
    d = sub.add_parser("dry-run", help="list a profile's training runs and estimate their time on this device")
    d.add_argument("--profile", default="full")
    d.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    d.add_argument("--data-root", default=None)
    d.add_argument("--reference", default=None)
    d.add_argument("--n-train", type=_count, default=None, help="training samples (default: stage 01's, else Vislocas')")
    d.add_argument("--n-val", type=int, default=None)
    d.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    d.add_argument("--out", default=None)
    se = sub.add_parser("bench-seeds", help="several seeds at once against one seed (samples/s over all seeds)")
    _shape_options(se, profile="full")
    se.add_argument("--config", default="authors", choices=["corrected", "authors"])
    se.add_argument("--seeds", type=_count, default=5, help="seeds trained together (default 5, the full profile's)")
    se.add_argument("--n-samples", type=_count, default=96)
    se.add_argument("--epochs", type=_count, default=1)
    se.add_argument("--out", default=None)
    pr = sub.add_parser("profile-training", help="torch.profiler of a few training steps at the profile's shapes")
    _shape_options(pr, profile="full")
    pr.add_argument("--config", default="corrected", choices=["corrected", "authors"])
    pr.add_argument("--steps", type=_count, default=6)
    pr.add_argument("--batch-size", type=_count, default=None, help="override the configuration's batch size")
    pr.add_argument("--trace", default=None, help="also write a Chrome trace here")
    pr.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.command == "dry-run":
        return _dry_run_cli(args)
    if args.command not in ("bench", "bench-training", "bench-loader", "profile-training", "bench-seeds"):
        parser.print_help(sys.stderr)
        return 2
    from .encoders import OfflineError

    try:
        if args.command == "bench-seeds":
            res = seeds_throughput(reference=args.reference, profile=args.profile, device=args.device,
                                   config_name=args.config, n_seeds=args.seeds, n_samples=args.n_samples,
                                   epochs=args.epochs)
        elif args.command == "profile-training":
            res = profile_training(reference=args.reference, profile=args.profile, device=args.device,
                                   config_name=args.config, steps=args.steps, batch_size=args.batch_size,
                                   trace=args.trace)
        elif args.command == "bench-loader":
            res = loader_only_throughput(reference=args.reference, profile=args.profile, device=args.device,
                                         n_samples=args.n_samples, threads=args.threads)
        elif args.command == "bench-training":
            res = training_throughput(reference=args.reference, profile=args.profile, device=args.device,
                                      n_samples=args.n_samples, epochs=args.epochs, seed=args.seed,
                                      batch_size_corrected=args.batch_size,
                                      size_overrides={"n_blocks": args.n_blocks} if args.n_blocks else None,
                                      isolate=not args.no_isolate, warmup=not args.no_warmup,
                                      threads=args.threads)
        else:
            res = run(reference=args.reference, device=args.device, profile=args.profile,
                      token_budget=args.token_budget, batch_size_padded=args.batch_size, repeats=args.repeats,
                      isolate=not args.no_isolate, full_model=args.full_model, cache_dir=args.cache_dir)
    except (OfflineError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text = _write_json(res, args.out)
    print(text)
    return 0


def _count(text: str) -> int:
    """An argparse type: a whole number >= 1 (a count of samples, epochs, seeds, steps or threads)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"give a whole number >= 1, not {text!r}")
    return value


def _shape_options(p: argparse.ArgumentParser, *, profile: str) -> None:
    """The options every benchmark at a profile's shapes takes: the reference set, the profile, the device."""
    p.add_argument("--reference", default=None,
                   help=f"folder with {REFERENCE_CSV}, or a CSV of that format (default: {default_reference_dir()})")
    p.add_argument("--profile", default=profile,
                   help=f"profile whose encoder widths and training.base sizes to use (default: {profile})")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")


def _write_json(res: dict, out) -> str:
    """The result as indented JSON, also written to ``out`` when given."""
    text = json.dumps(res, indent=2, default=str)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    return text


def _dry_run_cli(args) -> int:
    try:
        res = dry_run(args.profile, args.device, data_root=args.data_root, reference=args.reference,
                      n_train=args.n_train, n_val=args.n_val)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"python -m proloc_lib.benchmarks dry-run: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    text = _write_json(res, args.out)
    if args.json:
        print(text)
        return 0
    print(f"profile {res['profile']} on {res['device']} ({res['device_name']}): {res['n_runs']} training runs, "
          f"{res['n_train']} training samples ({res['sample_counts']}), lengths from {res['lengths']}")
    for r in res["runs"]:
        print(f"  {r['run']:<40} seed {r['seed']}  {r['epochs_max']:>3} epochs x {r['steps_per_epoch']:>5} steps "
              f"(batch {r['batch_size']}, ~{r['median_padded_width']} residues)  ~{r['estimated_seconds'] / 60:8.1f} min")
    print(f"estimated training time: {res['estimated_training_hours']:.2f} h on this device. {res['note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
