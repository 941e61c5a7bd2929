"""Embedding extraction and the feature store.

Format: a folder of safetensors shards plus ``store.json``. Why safetensors: no pickle, each
shard is written to a temporary name and renamed (a shard is either whole or absent, so an
interrupted run resumes by skipping committed keys), files are memory-mapped on read, and
shards from several machines merge by copying files into one folder.

Each sequence is embedded once, keyed by its hash, whatever the number of its images; each
image is keyed by its file checksum. Per-residue tensors are kept in float16 at their true
length (no padding), with a mean-pooled vector ``<key>.mean`` for the baselines.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

STORE_FORMAT = "safetensors-shards-v1"
STORE_DTYPE = torch.float16


class StaleStoreError(RuntimeError):
    """The store on disk was made by another model or preprocessing."""


def fingerprint_id(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:16]


def parse_shard(spec: str | None) -> tuple[int, int]:
    """'i/N' -> (i, N), with 0 <= i < N; None -> (0, 1)."""
    if not spec:
        return 0, 1
    try:
        i, n = (int(x) for x in str(spec).split("/"))
    except ValueError:
        raise ValueError(f"shard must look like 'i/N', got '{spec}'") from None
    if not 0 <= i < n:
        raise ValueError(f"shard index {i} out of range for {n} shards")
    return i, n


def select_shard(keys, shard: tuple[int, int]) -> list[str]:
    """Deterministic: the same keys go to the same shard on every machine."""
    i, n = shard
    return [k for k in sorted(set(keys)) if int(hashlib.md5(k.encode()).hexdigest(), 16) % n == i]


class EmbeddingStore:
    """Read/append access to one store folder (one modality, one model)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta = self.path / "store.json"
        if not meta.exists():
            raise FileNotFoundError(f"no embedding store at {self.path} (missing store.json)")
        self.meta = json.loads(meta.read_text())
        self._index: dict[str, Path] | None = None
        self._handles: dict[Path, object] = {}

    # -- creation -------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, fingerprint: dict, hidden_size: int, kind: str,
             on_stale: str = "error") -> "EmbeddingStore":
        """Open for appending; create if absent. A store of another fingerprint is stale:
        ``on_stale='error'`` raises, ``'recompute'`` moves it aside and starts afresh."""
        path = Path(path)
        meta_path = path / "store.json"
        meta = {"format": STORE_FORMAT, "kind": kind, "hidden_size": int(hidden_size),
                "dtype": str(STORE_DTYPE).replace("torch.", ""), "fingerprint": fingerprint,
                "fingerprint_id": fingerprint_id(fingerprint)}
        if meta_path.exists():
            old = json.loads(meta_path.read_text())
            same = old.get("fingerprint_id") == meta["fingerprint_id"] and old.get("hidden_size") == meta["hidden_size"]
            if not same:
                msg = (f"embedding store {path} was made with {old.get('fingerprint')} "
                       f"(hidden size {old.get('hidden_size')}); now asked for {fingerprint} "
                       f"(hidden size {hidden_size})")
                if on_stale != "recompute":
                    raise StaleStoreError(msg + "; pass on_stale='recompute' to rebuild it")
                aside = path.with_name(path.name + f".stale-{old.get('fingerprint_id', 'unknown')}")
                shutil.rmtree(aside, ignore_errors=True)
                path.rename(aside)
        if not meta_path.exists():
            path.mkdir(parents=True, exist_ok=True)
            tmp = meta_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(meta, indent=2, default=str))
            os.replace(tmp, meta_path)
        return cls(path)

    # -- reading --------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return int(self.meta["hidden_size"])

    def shards(self) -> list[Path]:
        return sorted(self.path.glob("shard-*.safetensors"))

    def _build_index(self) -> dict[str, Path]:
        index = {}
        for shard in self.shards():
            with safe_open(str(shard), framework="pt") as fh:
                if fh.metadata().get("fingerprint_id") != self.meta["fingerprint_id"]:
                    raise StaleStoreError(f"shard {shard} belongs to another model/preprocessing")
                for k in fh.keys():
                    if not k.endswith(".mean"):
                        index[k] = shard
        return index

    def keys(self) -> set[str]:
        if self._index is None:
            self._index = self._build_index()
        return set(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self.keys()

    def __len__(self) -> int:
        return len(self.keys())

    def get(self, key: str, pooled: bool = False) -> torch.Tensor:
        if key not in self.keys():
            raise KeyError(f"'{key}' not in embedding store {self.path}")
        shard = self._index[key]
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(shard), framework="pt")
        return self._handles[shard].get_tensor(key + ".mean" if pooled else key)

    def get_many(self, keys, pooled: bool = False, dtype=torch.float32) -> list[torch.Tensor]:
        return [self.get(k, pooled).to(dtype) for k in keys]

    def failures(self) -> list[dict]:
        f = self.path / "failures.json"
        return json.loads(f.read_text()) if f.exists() else []

    # -- writing --------------------------------------------------------------------------
    def commit(self, items: dict[str, torch.Tensor], tag: str = "all") -> Path | None:
        """Write one shard atomically: temp file, fsync, rename. Adds ``<key>.mean``."""
        if not items:
            return None
        tensors = {}
        for k, t in items.items():
            if t.shape[-1] != self.hidden_size:
                raise ValueError(f"item '{k}' has hidden size {t.shape[-1]}, store {self.path} expects {self.hidden_size}")
            t = t.detach().to("cpu", STORE_DTYPE).contiguous()
            tensors[k] = t
            tensors[k + ".mean"] = t.float().mean(0).to(STORE_DTYPE)
        n = len(list(self.path.glob(f"shard-{tag}-*.safetensors")))
        final = self.path / f"shard-{tag}-{n:05d}.safetensors"
        tmp = final.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"fingerprint_id": self.meta["fingerprint_id"]})
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        self._index = None
        return final

    def record_failures(self, failures: list[dict]) -> None:
        merged = {f["key"]: f for f in self.failures()}
        merged.update({f["key"]: f for f in failures})
        # an item that has since been embedded is no longer a failure
        done = self.keys()
        out = [f for k, f in sorted(merged.items()) if k not in done]
        tmp = self.path / "failures.json.tmp"
        tmp.write_text(json.dumps(out, indent=2))
        os.replace(tmp, self.path / "failures.json")

    def close(self):
        self._handles.clear()


def merge_stores(sources: list[str | Path], dest: str | Path) -> EmbeddingStore:
    """Join shard stores (from ``--shard i/N`` runs) into one; fingerprints must agree."""
    stores = [EmbeddingStore(s) for s in sources]
    fids = {s.meta["fingerprint_id"] for s in stores}
    if len(fids) != 1:
        raise StaleStoreError(f"cannot merge stores of different models/preprocessing: {sorted(fids)}")
    first = stores[0].meta
    out = EmbeddingStore.open(dest, first["fingerprint"], first["hidden_size"], first["kind"])
    have = out.keys()
    for s in stores:
        if s.path.resolve() == out.path.resolve():
            continue
        for shard in s.shards():
            with safe_open(str(shard), framework="pt") as fh:
                keys = [k for k in fh.keys() if not k.endswith(".mean")]
            if set(keys) <= have:
                continue
            target = out.path / f"shard-merged-{hashlib.md5(str(shard.resolve()).encode()).hexdigest()[:8]}-{shard.name}"
            tmp = target.with_suffix(".tmp")
            shutil.copyfile(shard, tmp)
            os.replace(tmp, target)
            have |= set(keys)
        out.record_failures(s.failures())
    out._index = None
    return out


# -- sequence extraction -----------------------------------------------------------------------
def length_buckets(lengths: dict[str, int], token_budget: int, max_batch: int = 256) -> list[list[str]]:
    """Batches of keys with similar length: sorted, cut when (longest x count) exceeds the budget."""
    order = sorted(lengths, key=lambda k: (lengths[k], k))
    batches, cur = [], []
    for k in order:
        if cur and (lengths[k] * (len(cur) + 1) > token_budget or len(cur) >= max_batch):
            batches.append(cur)
            cur = []
        cur.append(k)
    if cur:
        batches.append(cur)
    return batches


def _windows(n: int, size: int) -> list[tuple[int, int]]:
    """Overlapping windows (half overlap) covering 0..n."""
    stride = max(1, size // 2)
    starts = list(range(0, max(1, n - size) + 1, stride))
    if starts[-1] + size < n:
        starts.append(n - size)
    return [(s, min(n, s + size)) for s in starts]


def embed_sequence_long(encoder, seq: str, max_residues: int) -> torch.Tensor:
    """Windows of ``max_residues`` with half overlap; per-residue outputs averaged where they overlap."""
    out = torch.zeros(len(seq), encoder.hidden_size)
    count = torch.zeros(len(seq), 1)
    for a, b in _windows(len(seq), max_residues):
        out[a:b] += encoder.embed_batch([seq[a:b]])[0]
        count[a:b] += 1
    return out / count


def extract_sequences(sequences: dict[str, str], encoder, store_dir: str | Path, token_budget: int = 8000,
                      max_residues: int = 1000, long_policy: str = "truncate", shard_size: int = 256,
                      shard: str | None = None, on_stale: str = "error", progress: bool = True) -> dict:
    """Embed each unique sequence once ({key: sequence}); resumable; returns a report."""
    from .sequences import InvalidSequenceError, clean_sequence

    if long_policy not in ("truncate", "windows"):
        raise ValueError(f"long_policy must be 'truncate' or 'windows', got '{long_policy}'")
    fp = dict(encoder.fingerprint(), max_residues=max_residues, long_policy=long_policy)
    store = EmbeddingStore.open(store_dir, fp, encoder.hidden_size, "sequence", on_stale)
    todo = [k for k in select_shard(sequences, parse_shard(shard)) if k not in store.keys()]
    failures, clean = [], {}
    for k in todo:
        try:
            clean[k] = clean_sequence(sequences[k], where=f"sequence {k}")
        except InvalidSequenceError as exc:
            failures.append({"key": k, "error": str(exc)})
    long_keys = [k for k, s in clean.items() if len(s) > max_residues]
    report = {"requested": len(sequences), "already_stored": len(sequences) - len(todo) if shard is None else None,
              "embedded": 0, "long_sequences": len(long_keys), "long_policy": long_policy, "failures": failures}
    tag = "all" if shard is None else "s{}of{}".format(*parse_shard(shard))
    buffer: dict[str, torch.Tensor] = {}
    lengths = {k: min(len(s), max_residues) for k, s in clean.items()}
    batches = length_buckets(lengths, token_budget)
    bar = tqdm(total=len(clean), desc="ProtT5 sequences", unit="seq", disable=not progress)
    for batch in batches:
        short = [k for k in batch if k not in long_keys or long_policy == "truncate"]
        if short:
            outs = encoder.embed_batch([clean[k][:max_residues] for k in short])
            buffer.update(zip(short, outs))
        for k in batch:
            if k in long_keys and long_policy == "windows":
                buffer[k] = embed_sequence_long(encoder, clean[k], max_residues)
        bar.update(len(batch))
        if len(buffer) >= shard_size:
            store.commit(buffer, tag)
            report["embedded"] += len(buffer)
            buffer = {}
    store.commit(buffer, tag)
    report["embedded"] += len(buffer)
    bar.close()
    store.record_failures(failures)
    return report


def crop_grid(image, grid: int) -> list:
    """Split an image into grid x grid tiles (row-major), each later resized by the ViT transform.

    Downscaling a ~3000-pixel IHC image to 224 pixels loses the subcellular detail the task needs;
    a bag of tiles keeps it (high-resolution mode)."""
    if grid <= 1:
        return [image]
    w, h = image.size
    return [image.crop((c * w // grid, r * h // grid, (c + 1) * w // grid, (r + 1) * h // grid))
            for r in range(grid) for c in range(grid)]


def extract_images(images: dict[str, str | Path], encoder, store_dir: str | Path, batch_size: int = 32,
                   shard_size: int = 256, shard: str | None = None, on_stale: str = "error",
                   progress: bool = True, grid: int = 1) -> dict:
    """Embed each image once ({image checksum: path}) with all its tokens; resumable.

    ``grid > 1``: high-resolution mode, grid x grid tiles embedded as one bag of
    grid^2 x n_tokens tokens."""
    from .images import BadImageError, load_image

    fp = dict(encoder.fingerprint(), crop_grid=grid) if grid > 1 else encoder.fingerprint()
    store = EmbeddingStore.open(store_dir, fp, encoder.hidden_size, "image", on_stale)
    todo = [k for k in select_shard(images, parse_shard(shard)) if k not in store.keys()]
    tag = "all" if shard is None else "s{}of{}".format(*parse_shard(shard))
    failures, buffer, embedded = [], {}, 0
    for start in tqdm(range(0, len(todo), batch_size), desc="ViT images", unit="batch", disable=not progress):
        keys, pics = [], []
        for k in todo[start:start + batch_size]:
            try:
                pics.extend(crop_grid(load_image(images[k]), grid))
                keys.append(k)
            except BadImageError as exc:
                failures.append({"key": k, "path": str(images[k]), "error": str(exc)})
        if pics:
            tokens = encoder.embed_batch(pics)   # (n_images * grid^2, T, D)
            tokens = tokens.reshape(len(keys), -1, tokens.shape[-1])
            buffer.update(zip(keys, tokens))
        if len(buffer) >= shard_size:
            store.commit(buffer, tag)
            embedded += len(buffer)
            buffer = {}
    store.commit(buffer, tag)
    embedded += len(buffer)
    store.record_failures(failures)
    return {"requested": len(images), "embedded": embedded, "failures": failures}


# -- reading for training ----------------------------------------------------------------------
def pad_batch(tensors: list[torch.Tensor], pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack variable-length (L_i, D) tensors to (B, Lmax, D) with a bool mask (True = real).

    ``pad_to`` pads further, to a fixed length (the published code's global padding)."""
    lengths = torch.tensor([t.shape[0] for t in tensors])
    width = max(int(lengths.max()), pad_to or 0)
    out = torch.zeros(len(tensors), width, tensors[0].shape[-1], dtype=tensors[0].dtype)
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
    mask = torch.arange(out.shape[1])[None, :] < lengths[:, None]
    return out, mask


def store_size_bytes(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# -- the stage, as notebook 02 and the command line run it ---------------------------------------
def embed_sequence_stage(cfg: dict, proteins, out_dir: str | Path, device: str, shard: str | None = None,
                         on_stale: str = "recompute", progress: bool = True) -> dict:
    from .encoders import load_sequence_encoder

    ecfg = cfg["embeddings"]
    encoder = load_sequence_encoder(ecfg["sequence"], device=device)
    unique = dict(zip(proteins["seq_hash"], proteins["sequence"]))
    return extract_sequences(unique, encoder, Path(out_dir) / "sequences", token_budget=ecfg["token_budget"],
                             max_residues=ecfg["max_residues"], long_policy=ecfg["long_policy"],
                             shard_size=ecfg["shard_size"], shard=shard, on_stale=on_stale, progress=progress)


def image_embedder(cfg: dict, out_dir: str | Path, device: str, shard: str | None = None,
                   on_stale: str = "recompute", progress: bool = True):
    """``embed({image checksum: path}) -> report`` into the stage's image store (also used by the
    data stage's streaming mode, which embeds images as they arrive)."""
    from .encoders import load_image_encoder

    ecfg = cfg["embeddings"]
    encoder = load_image_encoder(ecfg["image"], device=device)
    return lambda paths: extract_images(paths, encoder, Path(out_dir) / "images", batch_size=ecfg["image_batch_size"],
                                        shard_size=ecfg["shard_size"], shard=shard, on_stale=on_stale,
                                        progress=progress, grid=ecfg.get("crop_grid", 1))


def embed_image_stage(cfg: dict, images, profile_dir: str | Path, out_dir: str | Path, device: str,
                      shard: str | None = None, on_stale: str = "recompute", progress: bool = True) -> dict:
    paths = {row.image_id: Path(profile_dir) / row.path for row in images.itertuples()}
    return image_embedder(cfg, out_dir, device, shard, on_stale, progress)(paths)


def cli(argv: list[str] | None = None) -> int:
    """``extract`` (sharded; under torchrun each rank takes its share), ``merge``, ``bench*``."""
    import argparse
    import os

    import pandas as pd

    from . import config, manifest

    argv = list(argv if argv is not None else __import__("sys").argv[1:])
    if not argv or argv[0] not in ("extract", "merge"):
        from .benchmarks import main as bench_main
        return bench_main(argv)
    parser = argparse.ArgumentParser(prog="python -m proloc_lib.embeddings")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("extract", help="embed the stage-01 tables of a profile (resumable, shardable)")
    ex.add_argument("--profile", default="demo")
    ex.add_argument("--data-root", default=None)
    ex.add_argument("--device", default="auto")
    ex.add_argument("--shard", default=None, help="i/N: this machine's share (default under torchrun: RANK/WORLD_SIZE)")
    ex.add_argument("--modality", choices=["sequences", "images", "both"], default="both")
    ex.add_argument("--on-stale", choices=["error", "recompute"], default="error")
    mg = sub.add_parser("merge", help="join stores written on several machines into one")
    mg.add_argument("dest")
    mg.add_argument("sources", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "merge":
        store = merge_stores(args.sources, args.dest)
        print(f"merged {len(args.sources)} stores into {store.path}: {len(store)} items")
        return 0
    world = int(os.environ.get("WORLD_SIZE", "1"))
    shard, device = args.shard, args.device
    if world > 1:  # launched by torchrun / accelerate: one deterministic share per rank
        shard = shard or f"{os.environ['RANK']}/{world}"
        if device == "auto":
            import torch
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    device = config.resolve_device(device)
    cfg = config.load_profile(args.profile)
    in_dir = config.stage_dir(args.profile, "01_data_assembly", args.data_root)
    out_dir = config.stage_dir(args.profile, "02_embeddings", args.data_root)
    manifest.read_manifest(in_dir)
    if args.modality in ("sequences", "both"):
        rep = embed_sequence_stage(cfg, pd.read_parquet(in_dir / "proteins.parquet"), out_dir, device, shard, args.on_stale)
        print(f"sequences: {rep['embedded']} embedded, {len(rep['failures'])} failures")
    if args.modality in ("images", "both"):
        rep = embed_image_stage(cfg, pd.read_parquet(in_dir / "images.parquet"), config.data_root(args.data_root) / args.profile,
                                out_dir, device, shard, args.on_stale)
        print(f"images: {rep['embedded']} embedded, {len(rep['failures'])} failures")
    print("done; run notebook 02 to verify the stores and write the stage manifest")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(cli(sys.argv[1:]))
