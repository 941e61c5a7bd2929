"""Embedding extraction and the feature store.

Format: a folder of safetensors shards plus ``store.json``. Why safetensors: no pickle, each
shard is written to a temporary name and renamed (a shard is either whole or absent, so an
interrupted run resumes by skipping committed keys), files are memory-mapped on read, and
shards from several machines merge by copying files into one folder.

Each sequence is embedded once, keyed by its hash, whatever the number of its images; each
image is keyed by its file checksum. Per-residue tensors are kept in float16 at their true
length (no padding), with a mean-pooled vector ``<key>.mean`` for the baselines.

Integrity. A shard is named by its content: ``shard-<tag>-<sha256[:32]>.safetensors``, so names
never collide whatever is deleted, and the name is the shard's checksum. The index (key ->
shard) is derived from the files on disk, built once per opened store and kept in step with
``commit``. ``verified.json`` remembers the size and mtime of every shard whose checksum was
checked (and so which shards the store should hold). Opening a store checks every shard's
header and size (a truncated or garbage file is named, never a SafetensorError traceback) and
re-hashes the shards whose size or mtime changed since they were verified; ``verify(full=True)``
(run by ``extract`` and notebook 02) re-hashes all of them, which also finds corruption inside
the data region. A writer (``EmbeddingStore.open``) moves a bad shard to ``bad/`` and reports
it, so its items are re-embedded; a reader raises :class:`CorruptStoreError` naming the file.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .errors import RunFailed, UserError, cli_main
from .fileio import publish, write_text
from .images import file_sha256

STORE_FORMAT = "safetensors-shards-v1"
STORE_DTYPE = torch.float16
SHARD_GLOB = "shard-*.safetensors"
SHARD_NAME = re.compile(r"^shard-(?P<tag>[A-Za-z0-9_.]+)-(?P<sha>[0-9a-f]{32})\.safetensors$")
VERIFIED = "verified.json"
BAD_DIR = "bad"
MAX_HEADER = 512 << 20          # a safetensors header larger than this is garbage, not a shard


class StoreError(UserError):
    """A feature store that cannot be used as it is (message names the folder or file)."""


class StaleStoreError(StoreError, RuntimeError):
    """The store on disk was made by another model or preprocessing."""


class CorruptStoreError(StoreError):
    """A shard is missing, truncated, garbage or fails its checksum."""


class ShardSpecError(UserError, ValueError):
    """A ``--shard`` that is not 'i/N' with 0 <= i < N."""


class IncompleteStoreError(StoreError):
    """Items that the stage tables need are not in the store."""


def fingerprint_id(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:16]


def parse_shard(spec: str | None) -> tuple[int, int]:
    """'i/N' -> (i, N), with 0 <= i < N; None -> (0, 1)."""
    if not spec:
        return 0, 1
    try:
        i, n = (int(x) for x in str(spec).split("/"))
    except ValueError:
        raise ShardSpecError(f"--shard must look like 'i/N' (e.g. 0/4), got '{spec}'") from None
    if not 0 <= i < n:
        raise ShardSpecError(f"--shard {spec}: index {i} out of range for {n} shards (0 <= i < N)")
    return i, n


def select_shard(keys, shard: tuple[int, int]) -> list[str]:
    """Deterministic: the same keys go to the same shard on every machine."""
    i, n = shard
    return [k for k in sorted(set(keys)) if int(hashlib.md5(k.encode()).hexdigest(), 16) % n == i]


def read_shard_header(path: str | Path) -> tuple[list[str], dict]:
    """(item keys, metadata) of a shard, checking that the file is as long as its header says.

    Raises CorruptStoreError naming the file for a truncated, empty or garbage file (instead of
    safetensors' own SafetensorError, which does not name it)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CorruptStoreError(f"shard {path} is truncated ({size} bytes): not a safetensors file")
            n = int.from_bytes(head, "little")
            if n > min(size - 8, MAX_HEADER):
                raise CorruptStoreError(f"shard {path} is truncated or garbage: header of {n} bytes in a "
                                        f"{size}-byte file")
            header = json.loads(fh.read(n))
    except OSError as exc:
        raise CorruptStoreError(f"shard {path} cannot be read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CorruptStoreError(f"shard {path} is garbage: its header is not safetensors JSON") from None
    if not isinstance(header, dict):
        raise CorruptStoreError(f"shard {path} is garbage: its header is not safetensors JSON")
    meta = header.pop("__metadata__", None) or {}
    try:
        end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        raise CorruptStoreError(f"shard {path} is garbage: malformed tensor entries in its header") from None
    if 8 + n + end != size:
        raise CorruptStoreError(f"shard {path} is truncated: {size} bytes on disk, its header says {8 + n + end}")
    return [k for k in header if not k.endswith(".mean")], meta


class EmbeddingStore:
    """Read/append access to one store folder (one modality, one model).

    Lookups (``in``, ``get``, ``keys()``, ``len``) are O(1): the index is built once, on first
    use, and ``commit`` adds to it (``index_builds`` counts the builds)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta = self.path / "store.json"
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"{self.path} is a file, not an embedding store folder")
        if not meta.exists():
            raise StoreError(f"no embedding store at {self.path} (missing store.json)")
        try:
            self.meta = json.loads(meta.read_text())
            self.meta["fingerprint_id"], self.meta["hidden_size"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            raise StoreError(f"{meta} is not an embedding store description (unreadable or wrong format)") from None
        self._index: dict[str, Path] | None = None
        self._handles: dict[Path, object] = {}
        self.index_builds = 0
        self.problems: list[dict] = []      # bad shards found (and set aside) by a writer's check

    # -- creation -------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, fingerprint: dict, hidden_size: int, kind: str,
             on_stale: str = "error", *, verify: str = "quick", extraction: dict | None = None) -> "EmbeddingStore":
        """Open for appending; create if absent. A store of another fingerprint is stale:
        ``on_stale='error'`` raises, ``'recompute'`` moves it aside and starts afresh.

        Bad shards are moved to ``bad/`` and listed in ``store.problems`` (their items are then
        missing, so the caller re-embeds them). ``verify='full'`` re-hashes every shard.

        ``extraction``: settings of the extraction itself that change the features (JPEG draft
        size, autocast dtype), kept apart from the encoder's fingerprint (which checkpoints copy
        and ``predict`` compares with its encoder) but part of ``fingerprint_id``, so stores made
        with other settings are stale."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path} is a file, not an embedding store folder")
        meta_path = path / "store.json"
        meta = {"format": STORE_FORMAT, "kind": kind, "hidden_size": int(hidden_size),
                "dtype": str(STORE_DTYPE).replace("torch.", ""), "fingerprint": fingerprint,
                "fingerprint_id": fingerprint_id(dict(fingerprint, _extraction=extraction) if extraction else fingerprint)}
        if extraction:
            meta["extraction"] = extraction
        if meta_path.exists():
            try:
                old = json.loads(meta_path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                raise StoreError(f"{meta_path} is unreadable; move the folder {path} aside") from None
            same = old.get("fingerprint_id") == meta["fingerprint_id"] and old.get("hidden_size") == meta["hidden_size"]
            if not same:
                msg = (f"embedding store {path} was made with {old.get('fingerprint')} "
                       f"{old.get('extraction') or ''} (hidden size {old.get('hidden_size')}); now asked for "
                       f"{fingerprint} {extraction or ''} (hidden size {hidden_size})")
                if on_stale != "recompute":
                    raise StaleStoreError(msg + "; pass on_stale='recompute' to rebuild it")
                aside = path.with_name(path.name + f".stale-{old.get('fingerprint_id', 'unknown')}")
                shutil.rmtree(aside, ignore_errors=True)
                path.rename(aside)
        elif path.is_dir() and any(not p.name.startswith(".") for p in path.iterdir()):  # ".": another rank's temp file
            raise StoreError(f"{path} is not empty and holds no store.json: not an embedding store; "
                             "choose another folder")
        if not meta_path.exists():
            path.mkdir(parents=True, exist_ok=True)
            write_text(meta_path, json.dumps(meta, indent=2, default=str))
        store = cls(path)
        store.verify(full=verify == "full", repair=True)
        return store

    # -- integrity ------------------------------------------------------------------------
    def _verified(self) -> dict[str, list[int]]:
        f = self.path / VERIFIED
        try:
            return json.loads(f.read_text()) if f.exists() else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}             # a cache: lost stamps only mean re-hashing

    def _save_verified(self, stamps: dict) -> None:
        if stamps != self._verified():
            try:
                write_text(self.path / VERIFIED, json.dumps(dict(sorted(stamps.items())), indent=1))
            except OSError:
                pass              # a read-only store: checks just run again next time

    @staticmethod
    def _stamp(p: Path) -> list[int]:
        st = p.stat()
        return [st.st_size, st.st_mtime_ns]

    def shards(self) -> list[Path]:
        return sorted(self.path.glob(SHARD_GLOB))

    def _check_shard(self, shard: Path, stamps: dict, full: bool) -> list[str]:
        """The shard's keys; raises CorruptStoreError/StaleStoreError naming the file."""
        keys, meta = read_shard_header(shard)
        if meta.get("fingerprint_id") != self.meta["fingerprint_id"]:
            raise StaleStoreError(f"shard {shard} belongs to another model/preprocessing than {self.path}")
        m = SHARD_NAME.match(shard.name)
        if m and (full or stamps.get(shard.name) != self._stamp(shard)):
            digest = file_sha256(shard)
            if digest[:32] != m["sha"]:
                raise CorruptStoreError(f"shard {shard} is corrupted: its checksum is {digest[:32]}, "
                                        f"its name says {m['sha']}")
        stamps[shard.name] = self._stamp(shard)
        return keys

    def verify(self, *, full: bool = False, repair: bool = False) -> list[dict]:
        """Check every shard and rebuild the index from what is on disk.

        Header and size of each shard always; the checksum of shards never verified or changed
        since (``full``: of all). ``repair`` (writers): move bad shards to ``bad/``, rename
        shards of the old numbered layout to content names, forget missing ones, and return the
        problems (also in ``self.problems``); otherwise raise CorruptStoreError on the first."""
        stamps = self._verified()
        index, problems, seen = {}, [], set()
        for shard in self.shards():
            try:
                keys = self._check_shard(shard, stamps, full)
            except (CorruptStoreError, StaleStoreError) as exc:
                stamps.pop(shard.name, None)
                if not repair:
                    raise CorruptStoreError(f"{exc}; run `python -m proloc_lib.embeddings extract` "
                                            "(or notebook 02) to re-embed its items") from None
                bad = self.path / BAD_DIR
                bad.mkdir(exist_ok=True)
                try:
                    os.replace(shard, bad / shard.name)
                except FileNotFoundError:       # another process set it aside first
                    pass
                problems.append({"shard": str(shard), "problem": str(exc), "moved_to": str(bad / shard.name)})
                continue
            if not SHARD_NAME.match(shard.name) and repair:   # old numbered name: give it its content name
                named = self.path / f"shard-{_tag_of(shard.name)}-{file_sha256(shard)[:32]}.safetensors"
                os.replace(shard, named)
                stamps.pop(shard.name, None)
                stamps[named.name] = self._stamp(named)
                shard = named
            seen.add(shard.name)
            for k in keys:
                index[k] = shard
        for name in sorted(set(stamps) - seen):          # verified once, gone now
            if not repair:
                raise CorruptStoreError(f"shard {self.path / name} is missing (the store held it before); "
                                        "run `python -m proloc_lib.embeddings extract` (or notebook 02) "
                                        "to re-embed its items")
            problems.append({"shard": str(self.path / name), "problem": "missing (deleted or lost in a sync)"})
            stamps.pop(name)
        self._save_verified(stamps)
        self._index = index
        self.index_builds += 1
        self._handles.clear()
        self.problems = problems
        return problems

    # -- reading --------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return int(self.meta["hidden_size"])

    def _ensure_index(self) -> dict[str, Path]:
        if self._index is None:
            self.verify()
        return self._index

    def keys(self):
        """A live, read-only view of the stored keys (O(1) membership)."""
        return self._ensure_index().keys()

    def __contains__(self, key: str) -> bool:
        return key in self._ensure_index()

    def __len__(self) -> int:
        return len(self._ensure_index())

    def get(self, key: str, pooled: bool = False) -> torch.Tensor:
        index = self._ensure_index()
        shard = index.get(key)
        if shard is None:
            raise KeyError(f"'{key}' not in embedding store {self.path}")
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(shard), framework="pt")
        return self._handles[shard].get_tensor(key + ".mean" if pooled else key)

    def get_many(self, keys, pooled: bool = False, dtype=torch.float32) -> list[torch.Tensor]:
        return [self.get(k, pooled).to(dtype) for k in keys]

    def failures(self) -> list[dict]:
        f = self.path / "failures.json"
        return json.loads(f.read_text()) if f.exists() else []

    def missing(self, keys) -> list[str]:
        """The keys of ``keys`` that are not stored, in order."""
        index = self._ensure_index()
        return [k for k in keys if k not in index]

    # -- writing --------------------------------------------------------------------------
    def commit(self, items: dict[str, torch.Tensor], tag: str = "all") -> Path | None:
        """Write one shard atomically (temp file, fsync, rename to its content name, umask
        permissions) and add its keys to the index. Adds ``<key>.mean``."""
        if not items:
            return None
        tensors = {}
        for k, t in items.items():
            if t.shape[-1] != self.hidden_size:
                raise ValueError(f"item '{k}' has hidden size {t.shape[-1]}, store {self.path} expects {self.hidden_size}")
            t = t.detach().to("cpu", STORE_DTYPE).contiguous()
            tensors[k] = t
            tensors[k + ".mean"] = t.float().mean(0).to(STORE_DTYPE)
        index = self._ensure_index()
        fd, tmp = tempfile.mkstemp(prefix=".shard-", suffix=".tmp", dir=self.path)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={"fingerprint_id": self.meta["fingerprint_id"]})
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            final = self.path / f"shard-{tag}-{file_sha256(tmp)[:32]}.safetensors"
            publish(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        stamps = self._verified()
        stamps[final.name] = self._stamp(final)
        self._save_verified(stamps)
        self._handles.pop(final, None)
        for k in items:
            index[k] = final
        return final

    def record_failures(self, failures: list[dict]) -> None:
        merged = {f["key"]: f for f in self.failures()}
        merged.update({f["key"]: f for f in failures})
        # an item that has since been embedded is no longer a failure
        out = [f for k, f in sorted(merged.items()) if k not in self]
        if out or (self.path / "failures.json").exists():
            write_text(self.path / "failures.json", json.dumps(out, indent=2))

    def close(self):
        self._handles.clear()


def _tag_of(name: str) -> str:
    """'shard-all-00003.safetensors' -> 'all' (old numbered layout)."""
    parts = name[len("shard-"):-len(".safetensors")].split("-")
    tag = "-".join(parts[:-1]) if len(parts) > 1 else "all"
    return re.sub(r"[^A-Za-z0-9_.]", "_", tag) or "all"


def merge_stores(sources: list[str | Path], dest: str | Path) -> EmbeddingStore:
    """Join shard stores (from ``--shard i/N`` runs) into one; fingerprints must agree.

    Every source shard is checked (header, size, checksum) before it is copied; a bad one is
    skipped and listed in the returned store's ``problems``."""
    if not sources:
        raise UserError("merge: give at least one source store")
    stores = []
    for s in sources:
        if not Path(s).exists():
            raise StoreError(f"merge source {s} does not exist")
        stores.append(EmbeddingStore(s))
    fids = {s.meta["fingerprint_id"] for s in stores}
    if len(fids) != 1:
        names = ", ".join(f"{s.path} ({s.meta['fingerprint_id']})" for s in stores)
        raise StaleStoreError(f"cannot merge stores of different models/preprocessing: {names}")
    first = stores[0].meta
    out = EmbeddingStore.open(dest, first["fingerprint"], first["hidden_size"], first["kind"], on_stale="error",
                              extraction=first.get("extraction"))
    problems = list(out.problems)
    for s in stores:
        if s.path.resolve() == out.path.resolve():
            continue
        for shard in s.shards():
            try:
                keys = s._check_shard(shard, {}, True)
            except (CorruptStoreError, StaleStoreError) as exc:
                problems.append({"shard": str(shard), "problem": f"{exc}; not copied"})
                continue
            if all(k in out for k in keys):
                continue
            m = SHARD_NAME.match(shard.name)
            name = shard.name if m else f"shard-{_tag_of(shard.name)}-{file_sha256(shard)[:32]}.safetensors"
            fd, tmp = tempfile.mkstemp(prefix=".merge-", suffix=".tmp", dir=out.path)
            os.close(fd)
            try:
                shutil.copyfile(shard, tmp)
                publish(tmp, out.path / name)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            out._ensure_index().update({k: out.path / name for k in keys})
        out.record_failures(s.failures())
    out.verify(repair=True)      # stamps for the copied shards, index from disk
    out.problems = problems + out.problems
    return out


# -- length bucketing (the one implementation) ---------------------------------------------------
def length_buckets(lengths, token_budget: int | None = None, max_batch: int = 256, *, rng=None,
                   jitter: float = 0.0, shuffle: bool = False) -> list[list]:
    """Batches of items of similar length, so padding each batch to its own longest wastes little.

    ``lengths``: ``{key: length}`` (batches of keys) or a sequence / 1-d array of lengths
    (batches of integer indices). Items are sorted by length (ties by key or index) and a batch
    is closed when it holds ``max_batch`` items or when its padded size, longest x count, would
    pass ``token_budget`` (None: no budget). A single item longer than the budget gets a batch
    of its own. ``jitter`` > 0 (needs ``rng``, a numpy Generator) adds uniform noise of up to
    ``jitter`` x the longest length to the sort keys, so batches differ between epochs;
    ``shuffle`` shuffles the batch order with ``rng``. Every item appears in exactly one batch.

    Training: ``length_buckets(lengths, batch_tokens, batch_size, rng=rng, jitter=0.1,
    shuffle=True)``; embedding: ``length_buckets({key: n_residues}, token_budget)``.
    """
    import numpy as np

    if isinstance(lengths, dict):
        keys = list(lengths)
        lens = np.asarray([int(lengths[k]) for k in keys], dtype=np.int64)
        order = sorted(range(len(keys)), key=lambda i: (lens[i], keys[i]))
    else:
        keys = None
        lens = np.asarray(lengths, dtype=np.int64).reshape(-1)
        order = list(np.argsort(lens, kind="stable"))
    if jitter:
        if rng is None:
            raise ValueError("length_buckets: jitter needs rng (a numpy Generator)")
        noisy = lens + rng.uniform(0, jitter * max(1, int(lens.max()) if len(lens) else 1), size=len(lens))
        order = list(np.argsort(noisy))
    batches, cur, longest = [], [], 0
    for i in order:
        grown = max(longest, int(lens[i]))
        if cur and (len(cur) >= max_batch or (token_budget and grown * (len(cur) + 1) > token_budget)):
            batches.append(cur)
            cur, grown = [], int(lens[i])
        cur.append(keys[i] if keys is not None else int(i))
        longest = grown
    if cur:
        batches.append(cur)
    if shuffle:
        if rng is None:
            raise ValueError("length_buckets: shuffle needs rng (a numpy Generator)")
        rng.shuffle(batches)
    return batches


# -- sequence extraction -----------------------------------------------------------------------
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


def _repair_report(store: EmbeddingStore) -> list[dict]:
    """Bad shards a writer found and set aside, for the report (their items get re-embedded)."""
    return [dict(p) for p in store.problems]


def extract_sequences(sequences: dict[str, str], encoder, store_dir: str | Path, token_budget: int = 8000,
                      max_residues: int = 1000, long_policy: str = "truncate", shard_size: int = 256,
                      shard: str | None = None, on_stale: str = "error", progress: bool = True, *,
                      verify: str = "quick") -> dict:
    """Embed each unique sequence once ({key: sequence}); resumable; returns a report.

    ``verify='full'`` re-hashes every shard first; bad shards are set aside, listed under
    ``repaired`` and their items embedded again."""
    from .sequences import InvalidSequenceError, clean_sequence

    if long_policy not in ("truncate", "windows"):
        raise ValueError(f"long_policy must be 'truncate' or 'windows', got '{long_policy}'")
    share = parse_shard(shard)
    fp = dict(encoder.fingerprint(), max_residues=max_residues, long_policy=long_policy)
    store = EmbeddingStore.open(store_dir, fp, encoder.hidden_size, "sequence", on_stale, verify=verify)
    todo = store.missing(select_shard(sequences, share))
    failures, clean = [], {}
    for k in todo:
        try:
            clean[k] = clean_sequence(sequences[k], where=f"sequence {k}")
        except InvalidSequenceError as exc:
            failures.append({"key": k, "error": str(exc)})
    long_keys = {k for k, s in clean.items() if len(s) > max_residues}
    report = {"requested": len(sequences), "already_stored": len(sequences) - len(todo) if shard is None else None,
              "embedded": 0, "long_sequences": len(long_keys), "long_policy": long_policy, "failures": failures,
              "repaired": _repair_report(store)}
    tag = "all" if shard is None else "s{}of{}".format(*share)
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


# -- image extraction --------------------------------------------------------------------------
def crop_grid(image, grid: int) -> list:
    """Split an image into grid x grid tiles (row-major), each later resized by the ViT transform.

    Downscaling a ~3000-pixel IHC image to 224 pixels loses the subcellular detail the task needs;
    a bag of tiles keeps it (high-resolution mode)."""
    if grid <= 1:
        return [image]
    w, h = image.size
    return [image.crop((c * w // grid, r * h // grid, (c + 1) * w // grid, (r + 1) * h // grid))
            for r in range(grid) for c in range(grid)]


def decode_workers(setting="auto") -> int:
    """Threads for decoding: 'auto' = the CPUs this process may use (affinity, e.g. a container's
    share), else the given number. Pillow and torch release the GIL while decoding/resizing."""
    if setting in (None, "auto"):
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:               # macOS, Windows
            return max(1, os.cpu_count() or 1)
    n = int(setting)
    if n < 1:
        raise ValueError(f"decode_workers must be 'auto' or >= 1, got {setting}")
    return n


def transform_input_size(transform, data_config: dict | None = None) -> tuple[int, int] | None:
    """(width, height) the transform resizes to first: the smallest decode that loses nothing.

    Read from the first Resize of a torchvision Compose (an int = shorter side, so both sides must
    reach it); else from the data config (input size / crop_pct); None when unknown."""
    for t in getattr(transform, "transforms", None) or []:
        size = getattr(t, "size", None)
        if type(t).__name__.startswith("Resize") and size is not None:
            if isinstance(size, int):
                return size, size
            if len(size) == 1:
                return int(size[0]), int(size[0])
            return int(size[1]), int(size[0])
    if data_config and "input_size" in data_config:
        _, h, w = data_config["input_size"]
        pct = float(data_config.get("crop_pct") or 1.0)
        return int(w / pct + 0.999), int(h / pct + 0.999)
    return None


def draft_size(encoder, grid: int = 1, enabled: bool = True) -> tuple[int, int] | None:
    """JPEG draft target for this encoder: each of the grid x grid tiles must still reach the
    transform's input size. None (full decode) when disabled or the transform is unknown."""
    if not enabled:
        return None
    size = transform_input_size(getattr(encoder, "transform", None), getattr(encoder, "data_config", None))
    if size is None:
        return None
    g = max(1, int(grid))
    return size[0] * g, size[1] * g


def prepare_image(path, encoder, *, grid: int = 1, draft: tuple[int, int] | None = None):
    """Decode (JPEG draft to ``draft``), tile, transform: a (grid^2, C, H, W) tensor when the encoder
    has a ``transform`` (real ImageEncoder), else the list of PIL tiles for ``encoder.embed_batch``.
    The one preprocessing path of extraction (and the one ``predict`` should use to match it)."""
    from .images import load_image

    tiles = crop_grid(load_image(path, draft=draft), grid)
    transform = getattr(encoder, "transform", None)
    if transform is None or not hasattr(encoder, "model"):
        return tiles
    tiles = [t if t.mode == "RGB" else t.convert("RGB") for t in tiles]
    split = _split_transform(transform)
    if split is None:
        return torch.stack([transform(t) for t in tiles])
    pil_steps, mean, std = split
    out = []
    for t in tiles:
        for step in pil_steps:
            t = step(t)
        out.append(_to_normalized_tensor(t, mean, std))
    return torch.stack(out)


def _split_transform(transform):
    """(PIL steps, mean, std) of a ``Compose([PIL steps..., ToTensor, Normalize])``, else None.

    The tensor part is then done in numpy (float32, the same operations in the same order, so
    the same numbers): torch's intra-op thread pool, entered from several decode threads, costs
    ~50 ms per small image on a loaded 2-core machine where numpy takes ~1 ms."""
    steps = list(getattr(transform, "transforms", None) or [])
    names = [type(s).__name__ for s in steps]
    if len(steps) < 2 or names[-2] not in ("ToTensor", "MaybeToTensor") or names[-1] != "Normalize":
        return None
    if any(n.endswith("ToTensor") or n == "Normalize" for n in names[:-2]):
        return None
    norm = steps[-1]
    mean = torch.as_tensor(norm.mean, dtype=torch.float32).reshape(-1).numpy()
    std = torch.as_tensor(norm.std, dtype=torch.float32).reshape(-1).numpy()
    return steps[:-2], mean, std


def _to_normalized_tensor(image, mean, std) -> torch.Tensor:
    """ToTensor + Normalize of an RGB PIL image: (x / 255 - mean) / std, float32, (C, H, W)."""
    import numpy as np

    x = np.asarray(image, dtype=np.uint8).astype(np.float32) / np.float32(255)
    x = (x - mean) / std
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def prefetch(items, fn, workers: int, ahead: int):
    """Yield ``(item, future of fn(item))`` in order, with up to ``ahead`` running in a thread pool."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    it = iter(items)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending = deque()
        for item in it:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= ahead:
                break
        while pending:
            item, fut = pending.popleft()
            for nxt in it:
                pending.append((nxt, pool.submit(fn, nxt)))
                break
            yield item, fut


def image_autocast_dtype(device: str, enabled: bool = True):
    """bfloat16 on CUDA where supported, else float16; None (float32) on CPU or when disabled."""
    if not enabled or not str(device).startswith("cuda"):
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@torch.inference_mode()
def _forward_tokens(encoder, x: torch.Tensor, amp_dtype) -> torch.Tensor:
    """All ViT tokens of a (B, C, H, W) batch, float32 on the CPU (autocast on CUDA)."""
    dev = torch.device(encoder.device)
    if dev.type == "cuda":
        x = x.pin_memory().to(dev, non_blocking=True)
    x = x.to(device=dev, dtype=encoder.dtype)
    if amp_dtype is not None:
        with torch.autocast(device_type=dev.type, dtype=amp_dtype):
            out = encoder.model.forward_features(x)
    else:
        out = encoder.model.forward_features(x)
    return out.float().cpu()


def image_fingerprint(encoder, *, grid: int = 1, draft: tuple[int, int] | None = None,
                      amp_dtype=None) -> tuple[dict, dict]:
    """(fingerprint, extraction settings): what makes an image store's features what they are
    (a store of other ones is stale). The extraction settings are kept apart (see
    ``EmbeddingStore.open``)."""
    fp = dict(encoder.fingerprint())
    if grid > 1:
        fp["crop_grid"] = grid
    extraction = {}
    if draft is not None:
        extraction["jpeg_draft"] = list(draft)
    if amp_dtype is not None:
        extraction["autocast"] = str(amp_dtype).replace("torch.", "")
    return fp, extraction


def extract_images(images: dict[str, str | Path], encoder, store_dir: str | Path, batch_size: int = 32,
                   shard_size: int = 256, shard: str | None = None, on_stale: str = "error",
                   progress: bool = True, grid: int = 1, *, jpeg_draft: bool = True, workers="auto",
                   autocast: bool = True, verify: str = "quick") -> dict:
    """Embed each image once ({image checksum: path}) with all its tokens; resumable.

    ``grid > 1``: high-resolution mode, grid x grid tiles embedded as one bag of
    grid^2 x n_tokens tokens. Decoding and the transform run in ``workers`` threads ahead of
    the model; ``jpeg_draft`` decodes JPEGs at the smallest 1/2^k scale the transform still
    needs; on CUDA the ViT runs under bfloat16 (else float16) autocast (``autocast``). Features
    are stored in float16."""
    from .images import BadImageError

    share = parse_shard(shard)
    draft = draft_size(encoder, grid, jpeg_draft)
    amp_dtype = image_autocast_dtype(getattr(encoder, "device", "cpu"), autocast) if hasattr(encoder, "model") else None
    fp, extraction = image_fingerprint(encoder, grid=grid, draft=draft, amp_dtype=amp_dtype)
    store = EmbeddingStore.open(store_dir, fp, encoder.hidden_size, "image", on_stale, verify=verify,
                                extraction=extraction or None)
    todo = store.missing(select_shard(images, share))
    tag = "all" if shard is None else "s{}of{}".format(*share)
    n_workers = decode_workers(workers)
    failures, buffer, embedded = [], {}, 0
    repaired = _repair_report(store)

    def run_batch(keys, parts):
        if not keys:
            return
        if isinstance(parts[0], torch.Tensor):
            tokens = _forward_tokens(encoder, torch.cat(parts), amp_dtype)
        else:
            tokens = encoder.embed_batch([t for p in parts for t in p])   # (n_images * grid^2, T, D)
        buffer.update(zip(keys, tokens.reshape(len(keys), -1, tokens.shape[-1])))

    prep = lambda k: prepare_image(images[k], encoder, grid=grid, draft=draft)  # noqa: E731
    keys, parts = [], []
    bar = tqdm(total=len(todo), desc="ViT images", unit="img", disable=not progress)
    for k, fut in prefetch(todo, prep, n_workers, ahead=max(2 * batch_size, 2 * n_workers)):
        try:
            parts.append(fut.result())
            keys.append(k)
        except BadImageError as exc:
            failures.append({"key": k, "path": str(images[k]), "error": str(exc)})
        bar.update(1)
        if len(keys) >= batch_size:
            run_batch(keys, parts)
            keys, parts = [], []
        if len(buffer) >= shard_size:
            store.commit(buffer, tag)
            embedded += len(buffer)
            buffer = {}
    run_batch(keys, parts)
    bar.close()
    store.commit(buffer, tag)
    embedded += len(buffer)
    store.record_failures(failures)
    return {"requested": len(images), "embedded": embedded, "failures": failures, "repaired": repaired,
            "decode_workers": n_workers, "jpeg_draft": list(draft) if draft else None,
            "autocast": str(amp_dtype).replace("torch.", "") if amp_dtype else None}


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


def check_complete(store_dir: str | Path, keys, *, what: str) -> EmbeddingStore:
    """The store, verified in full, if it holds every key and records no failure; else
    IncompleteStoreError saying how many are missing and what to run."""
    store = EmbeddingStore(store_dir)
    store.verify(full=True)
    keys = list(dict.fromkeys(keys))
    missing = store.missing(keys)
    failures = [f for f in store.failures() if f["key"] in set(keys)]
    if missing or failures:
        example = ", ".join(missing[:3])
        raise IncompleteStoreError(
            f"{what} store {store.path} is incomplete: {len(missing)} of {len(keys)} items missing"
            + (f" (e.g. {example})" if missing else "")
            + (f", {len(failures)} failed (see {store.path / 'failures.json'})" if failures else "")
            + "; run the rest (`python -m proloc_lib.embeddings extract` for the other shards, then merge) "
            "and rerun this notebook; no manifest was written")
    return store


# -- the stage, as notebook 02 and the command line run it ---------------------------------------
VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def image_variants(cfg: dict) -> dict[str | None, dict]:
    """``{None: embeddings section, name: section with the variant's overrides merged in}``.

    Variants come from ``embeddings.image_variants: {name: overrides}``; each has its own store
    (:func:`image_store_dir`)."""
    ecfg = cfg["embeddings"]
    out = {None: ecfg}
    base = {k: v for k, v in ecfg.items() if k != "image_variants"}
    for name, over in (ecfg.get("image_variants") or {}).items():
        if not VARIANT_NAME.match(str(name)):
            raise UserError(f"embeddings.image_variants: name '{name}' must be letters, digits, '_', '.', '-'")
        if not isinstance(over, dict):
            raise UserError(f"embeddings.image_variants.{name}: expected a mapping of overrides, got {over!r}")
        out[str(name)] = _deep_merge(base, over)
    return out


def image_store_dir(out_dir: str | Path, variant: str | None = None) -> Path:
    """``02_embeddings/images`` (the profile's encoder) or ``02_embeddings/images-<variant>``."""
    return Path(out_dir) / ("images" if variant is None else f"images-{variant}")


def embed_sequence_stage(cfg: dict, proteins, out_dir: str | Path, device: str, shard: str | None = None,
                         on_stale: str = "recompute", progress: bool = True, *, verify: str = "full") -> dict:
    from .encoders import load_sequence_encoder

    ecfg = cfg["embeddings"]
    encoder = load_sequence_encoder(ecfg["sequence"], device=device)
    unique = dict(zip(proteins["seq_hash"], proteins["sequence"]))
    return extract_sequences(unique, encoder, Path(out_dir) / "sequences", token_budget=ecfg["token_budget"],
                             max_residues=ecfg["max_residues"], long_policy=ecfg["long_policy"],
                             shard_size=ecfg["shard_size"], shard=shard, on_stale=on_stale, progress=progress,
                             verify=verify)


def image_embedder(cfg: dict, out_dir: str | Path, device: str, shard: str | None = None,
                   on_stale: str = "recompute", progress: bool = True, *, variants: bool = True):
    """``embed({image checksum: path}) -> report`` into the stage's image store and, with
    ``variants``, each ``embeddings.image_variants`` store (also used by the data stage's
    streaming mode, which embeds images as they arrive). The report is the main store's, with
    ``report["variants"][name]`` for each variant. Each store is verified in full on the first
    call, quickly (changed shards only) after that."""
    from .encoders import load_image_encoder

    sections = image_variants(cfg) if variants else {None: cfg["embeddings"]}
    encoders: dict = {}
    calls = {"n": 0}

    def embed(paths: dict) -> dict:
        reports = {}
        for name, ecfg in sections.items():
            if name not in encoders:
                encoders[name] = load_image_encoder(ecfg["image"], device=device)
            reports[name] = extract_images(
                paths, encoders[name], image_store_dir(out_dir, name), batch_size=ecfg["image_batch_size"],
                shard_size=ecfg["shard_size"], shard=shard, on_stale=on_stale, progress=progress,
                grid=ecfg.get("crop_grid", 1), jpeg_draft=ecfg.get("jpeg_draft", True),
                workers=ecfg.get("decode_workers", "auto"), autocast=ecfg.get("image_autocast", True),
                verify="full" if calls["n"] == 0 else "quick")
        calls["n"] += 1
        report = reports.pop(None)
        if reports:
            report["variants"] = reports
        return report
    return embed


def embed_image_stage(cfg: dict, images, profile_dir: str | Path, out_dir: str | Path, device: str,
                      shard: str | None = None, on_stale: str = "recompute", progress: bool = True, *,
                      variants: bool = True) -> dict:
    paths = {row.image_id: Path(profile_dir) / row.path for row in images.itertuples()}
    return image_embedder(cfg, out_dir, device, shard, on_stale, progress, variants=variants)(paths)


# -- command line ---------------------------------------------------------------------------------
EXIT_CODES = """exit codes: 0 done; 1 some items could not be embedded (listed in the store's failures.json)
or merge skipped bad shards; 2 bad arguments, unknown profile, missing or wrong store/input files;
130 interrupted. --debug shows the traceback of an error."""


def _print_repairs(what: str, report: dict) -> None:
    for p in report.get("repaired") or []:
        where = f"; moved to {p['moved_to']}" if p.get("moved_to") else ""
        print(f"{what}: bad shard {p['shard']}: {p['problem']}{where}; its items are embedded again")


class _Parser(__import__("argparse").ArgumentParser):
    """argparse, but a usage error is one line (via UserError, exit 2), not usage + message."""

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")


def _load_profile(name: str) -> dict:
    from . import config

    try:
        return config.load_profile(name)
    except UserError:
        raise
    except (FileNotFoundError, ValueError, TypeError, OSError) as exc:
        raise UserError(f"profile '{name}': {exc}") from None


@cli_main("python -m proloc_lib.embeddings")
def _extract_or_merge(argv: list[str]) -> int:
    import pandas as pd

    from . import config, manifest
    from .encoders import OfflineError

    parser = _Parser(prog="python -m proloc_lib.embeddings", epilog=EXIT_CODES,
                                     description="Feature stores: extract (resumable, shardable), merge; "
                                                 "bench, bench-training, bench-images (JSON benchmarks).")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    ex = sub.add_parser("extract", help="embed the stage-01 tables of a profile (resumable, shardable)",
                        epilog=EXIT_CODES)
    ex.add_argument("--profile", default="demo")
    ex.add_argument("--data-root", default=None)
    ex.add_argument("--device", default="auto")
    ex.add_argument("--shard", default=None, help="i/N: this machine's share (default under torchrun: RANK/WORLD_SIZE)")
    ex.add_argument("--modality", choices=["sequences", "images", "both"], default="both")
    ex.add_argument("--on-stale", choices=["error", "recompute"], default="error")
    ex.add_argument("--debug", action="store_true", help="show tracebacks")
    mg = sub.add_parser("merge", help="join stores written on several machines into one", epilog=EXIT_CODES)
    mg.add_argument("dest")
    mg.add_argument("sources", nargs="+")
    mg.add_argument("--debug", action="store_true", help="show tracebacks")
    sub.add_parser("bench", help="store size, padded vs bucketed sequence throughput (JSON)", add_help=False)
    sub.add_parser("bench-training", help="authors' vs corrected training loop speed (JSON)", add_help=False)
    sub.add_parser("bench-images", help="image decode and extraction speed (JSON)", add_help=False)
    args = parser.parse_args(argv)
    if args.command == "merge":
        store = merge_stores(args.sources, args.dest)
        print(f"merged {len(args.sources)} stores into {store.path}: {len(store)} items")
        for p in store.problems:
            print(f"merge: bad shard {p['shard']}: {p['problem']}", file=__import__("sys").stderr)
        if store.problems:
            raise RunFailed(f"merge: {len(store.problems)} bad shard(s) were not copied (listed above); "
                            "re-extract their items with `extract` on the merged store")
        return 0
    shard = args.shard
    parse_shard(shard)                       # a bad --shard fails before any work
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = args.device
    if world > 1:  # launched by torchrun / accelerate: one deterministic share per rank
        shard = shard or f"{os.environ['RANK']}/{world}"
        if device == "auto":
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    try:
        device = config.resolve_device(device)
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"--device: {exc}") from None
    cfg = _load_profile(args.profile)
    in_dir = config.stage_dir(args.profile, "01_data_assembly", args.data_root)
    out_dir = config.stage_dir(args.profile, "02_embeddings", args.data_root)
    try:
        manifest.read_manifest(in_dir)
        proteins = pd.read_parquet(in_dir / "proteins.parquet") if args.modality != "images" else None
        images = pd.read_parquet(in_dir / "images.parquet") if args.modality != "sequences" else None
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the stage-01 tables in {in_dir}: {exc}") from None
    n_failed = 0
    try:
        if proteins is not None:
            rep = embed_sequence_stage(cfg, proteins, out_dir, device, shard, args.on_stale)
            _print_repairs("sequences", rep)
            print(f"sequences: {rep['embedded']} embedded, {len(rep['failures'])} failures")
            n_failed += len(rep["failures"])
        if images is not None:
            rep = embed_image_stage(cfg, images, config.data_root(args.data_root) / args.profile,
                                    out_dir, device, shard, args.on_stale)
            for name, r in [(None, rep), *rep.get("variants", {}).items()]:
                what = "images" if name is None else f"images-{name}"
                _print_repairs(what, r)
                print(f"{what}: {r['embedded']} embedded, {len(r['failures'])} failures "
                      f"({r['decode_workers']} decode threads)")
                n_failed += len(r["failures"])
    except OfflineError as exc:
        raise RunFailed(str(exc)) from None
    if n_failed:
        raise RunFailed(f"{n_failed} items could not be embedded (listed in the stores' failures.json); "
                        "fix or remove them, then run extract again")
    print("done; run notebook 02 to verify the stores and write the stage manifest")
    return 0


def cli(argv: list[str] | None = None) -> int:
    """``extract`` (sharded; under torchrun each rank takes its share), ``merge``, ``bench*``."""
    import sys

    argv = list(argv if argv is not None else sys.argv[1:])
    if argv and argv[0] in ("bench", "bench-training", "bench-images"):
        # old alias of `proloc bench*`: the command line dispatches, so embeddings never imports benchmarks
        from .cli import main as proloc_main
        return proloc_main(argv)
    return _extract_or_merge(argv)


if __name__ == "__main__":
    import sys

    sys.exit(cli(sys.argv[1:]))
