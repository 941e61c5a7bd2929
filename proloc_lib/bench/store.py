"""The feature store and sequence batching benchmark (``proloc bench``)."""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from proloc_lib.bench.common import (
    PROTT5_HIDDEN,
    REPEAT_IF_UNDER_S,
    PeakMemory,
    _log,
    _machine,
    _sync,
    read_reference,
    reference_csv_path,
    unique_sequences,
)
from proloc_lib.core import runtime
from proloc_lib.data.sequences import clean_sequence, prott5_format
from proloc_lib.features import encoders
from proloc_lib.features.batching import length_buckets
from proloc_lib.features.encoders import load_sequence_encoder
from proloc_lib.features.store import END_ROWS, STORE_DTYPE, EmbeddingStore, store_size_bytes
from proloc_lib.profiles import loader as profiles

AUTHORS_BYTES_PER_VALUE = 4   # float32
GOALS = {"store_size_ratio": 50.0, "bucketing_speedup": 5.0}
NOTE = ("Timings and memory are machine-dependent (CPU model, thread count, other load). "
        "With random_weights true the model is the demo's tiny random-weight ProtT5-style encoder: "
        "the speedup shows the cost of padding on this architecture family, not ProtT5-XL throughput. "
        "Store sizes are exact byte counts from the reference set's real lengths and row counts.")


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
    # per-residue + one mean and one </s> row each (a sequence store keeps its end rows)
    payload = (sum(lengths) + 2 * len(lengths)) * hidden_size * itemsize
    with tempfile.TemporaryDirectory(prefix="proloc-bench-store-", dir=workdir) as tmp:
        store = EmbeddingStore.open(Path(tmp) / "store", {"benchmark": "store_size", "hidden_size": hidden_size},
                                    hidden_size, "sequence", extraction={END_ROWS: True})
        keys = list(seqs)
        for start in range(0, len(keys), shard_size):
            chunk = keys[start:start + shard_size]
            store.commit({k: torch.zeros(len(seqs[k]), hidden_size, dtype=STORE_DTYPE) for k in chunk},
                         end_rows={k: torch.zeros(hidden_size, dtype=STORE_DTYPE) for k in chunk})
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
                        "length + its mean vector + its </s> row, safetensors shards + store.json (measured on disk)"),
        "ours_payload_bytes": payload,
        "ours_bytes": ours,
        "ours_overhead_bytes": ours - payload,
        "ours_files": n_files,
        "store_size_ratio": authors / ours,
        "store_size_ratio_with_end_token": authors_eos / ours,
    }


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

    if not model_cfg.get("pretrained"):
        return
    model_id, revision = str(model_cfg["model"]), str(model_cfg.get("revision", "main"))
    cached = (encoders._cached_file(model_id, ["config.json"], revision, cache_dir)
              and encoders._cached_file(model_id, ["spiece.model"], revision, cache_dir)
              and encoders._cached_file(model_id, ["model.safetensors", "pytorch_model.bin"], revision, cache_dir))
    if not cached:
        encoders._ensure_downloadable(model_id, "sequence model")


def run(reference=None, device: str = "auto", profile: str = "demo", model_cfg: dict | None = None,
        token_budget: int | None = None, batch_size_padded: int = 8, repeats: int = 2, isolate: bool = True,
        full_model: bool = False, cache_dir: str | None = None) -> dict:
    """All three benchmarks on the reference set; returns one JSON-ready dict."""
    if full_model and model_cfg is None:
        profile = "full"
    cfg = profiles.load_profile(profile)
    model_cfg = dict(model_cfg or cfg["embeddings"]["sequence"])
    token_budget = int(token_budget or cfg["embeddings"]["token_budget"])
    device = runtime.resolve_device(device)
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
