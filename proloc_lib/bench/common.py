"""What the benchmarks share: the reference set, random stores at a profile's shapes, machine facts, FLOP counts."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from proloc_lib.core import paths
from proloc_lib.data.sequences import clean_sequence, sequence_hash
from proloc_lib.features.store import END_ROWS, STORE_DTYPE, EmbeddingStore
from proloc_lib.training import datasets, settings

REFERENCE_CSV = "proloc_ihs_test.csv"
PROTT5_HIDDEN = 1024          # ProtT5-XL-U50 per-residue width
REPEAT_IF_UNDER_S = 20.0     # repeat a timing only when one run is shorter than this


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine(device: str, threads: int | None = None) -> dict:
    """Where a benchmark ran: the fields every JSON report carries (the load average too, since a
    busy machine slows every timing)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"device": device, "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "cpus_usable": usable,
            "torch_threads": threads or torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform()}
    info["device_name"] = (torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda")
                           else f"CPU ({info['cpu']}, {usable} usable cores)")
    try:
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# -- reference set -------------------------------------------------------------------------------
def default_reference_dir() -> Path:
    return paths.reference_dir()


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


# -- 2. padded vs bucketed embedding -------------------------------------------------------------
def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


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


# -- 4. training throughput: the authors' loop against the corrected one ------------------------
VIT_TOKENS = 197              # ViT-B/16 at 224 px: 196 patches + CLS (per crop)
VIT_B_HIDDEN = 768            # timm vit_base_patch16_224 width
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
    end_gen = torch.Generator().manual_seed(seed + 1)
    root = Path(root)
    seq_store = EmbeddingStore.open(root / "sequences", {"benchmark": "training", "random": True, "seed": seed},
                                    widths["seq_dim"], "sequence", extraction={END_ROWS: True})
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
            chunk = {k: torch.randn(*shape(v), generator=gen).to(STORE_DTYPE)
                     for k, v in items[start:start + shard_size]}
            # the </s> rows (TrainConfig.end_token "keep") from their own stream: the other draws stay as they were
            ends = ({k: torch.randn(widths["seq_dim"], generator=end_gen) for k in chunk}
                    if store is seq_store else None)
            store.commit(chunk, end_rows=ends)
        store.close()
    return seq_store.path, img_store.path, samples


def _samples_digest(samples: pd.DataFrame) -> str:
    text = "\n".join(sorted(f"{a}:{b}" for a, b in zip(samples["image_id"], samples["seq_hash"])))
    return sequence_hash(text) if text else ""


def _load_average() -> float | None:
    """The 1-minute load average (other processes on a shared machine skew timings)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def training_configs(profile_cfg: dict, epochs: int = 1, batch_size_corrected: int = 32,
                     size_overrides: dict | None = None) -> dict:
    """``{"authors": TrainConfig, "corrected": TrainConfig}`` of one model size (the profile's base sizes)."""

    base = {k: v for k, v in (profile_cfg.get("training", {}).get("base") or {}).items() if k in SIZE_KEYS}
    base.update(size_overrides or {})
    common = {"max_epochs": int(epochs), "patience": None}
    cfgs = {"authors": settings.make_config("authors", base, **common),
            "corrected": settings.make_config("corrected", base, batch_size=int(batch_size_corrected), **common)}
    sizes = {name: tuple(getattr(c, k) for k in SIZE_KEYS) for name, c in cfgs.items()}
    if len(set(sizes.values())) != 1:
        raise RuntimeError(f"model sizes differ between the configurations: {sizes}")
    return cfgs


# -- 5. loader-only throughput, FLOPs and the device's peak ---------------------------------------
# Dense tensor-core peaks (TFLOP/s, bf16/fp16, no sparsity) from the vendors' data sheets, by name.
PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0,
               "A10G": 70.0, "T4": 65.0, "V100": 125.0}


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

    return sum(3 * forward_flops(cfg, widths, len(i), w)
               for i, w in datasets.epoch_batches(ds.for_config(cfg).seq_lengths, cfg, shuffle=True, seed=seed,
                                                  pad_to=pad_to))


def _write_json(res: dict, out) -> str:
    """The result as indented JSON, also written to ``out`` when given."""
    text = json.dumps(res, indent=2, default=str)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    return text
