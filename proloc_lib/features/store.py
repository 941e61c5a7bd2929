"""Embedding extraction and the feature store.

Format: a folder of safetensors shards plus ``store.json``. Why safetensors: no pickle, each
shard is written to a temporary name and renamed (a shard is either whole or absent, so an
interrupted run resumes by skipping committed keys), files are memory-mapped on read, and
shards from several machines merge by copying files into one folder.

Each sequence is embedded once, keyed by its hash, whatever the number of its images; each
image is keyed by its file checksum. Per-residue tensors are kept in float16 at their true
length (no padding), with a mean-pooled vector ``<key>.mean`` for the baselines.

End-token rows. A sequence store whose ``extraction`` says ``end_rows`` also keeps each
sequence's ``</s>`` row (ProtT5's end token, which the published prott5.py feeds the model) as
``<key>.end``, beside its residue rows: ``get(key)`` and the pooled vector stay the residues
only, ``get(key, end_row=True)`` appends the ``</s>`` row. ``end_rows`` enters the fingerprint id,
so an extraction over a store made before (without them) finds it stale and re-embeds it; such a
store stays readable for everything that reads residue rows only.

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
A stored item holding NaN or infinity is refused on read (:class:`NonFiniteFeatureError`,
naming the item, the store and the shard).

Temporary files. A shard is written as ``.shard-<host>-<pid>-*.tmp`` (a merge: ``.merge-...``)
and renamed; a writer killed mid-write leaves its temporary file behind. Opening a store for
writing removes those of this host whose process is gone, never one of a live writer.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from proloc_lib.core.errors import UserError
from proloc_lib.core.fileio import (
    SafetensorsHeaderError,
    file_sha256,
    full_disk_as_error,
    publish,
    read_safetensors_header,
    write_text,
)

STORE_FORMAT = "safetensors-shards-v1"
STORE_DTYPE = torch.float16
SHARD_GLOB = "shard-*.safetensors"
SHARD_NAME = re.compile(r"^shard-(?P<tag>[A-Za-z0-9_.]+)-(?P<sha>[0-9a-f]{32})\.safetensors$")
VERIFIED = "verified.json"
BAD_DIR = "bad"
MAX_HEADER = 512 << 20          # a safetensors header larger than this is garbage, not a shard
END_SUFFIX = ".end"             # <key>.end: the sequence's </s> row (stores with end rows)
DERIVED_SUFFIXES = (".mean", END_SUFFIX)
END_ROWS = "end_rows"           # extraction key: the store keeps every sequence's </s> row
TEMP_NAME = re.compile(r"^\.(?:shard|merge)-(?P<host>[A-Za-z0-9_.]+)-(?P<pid>\d+)-.*\.tmp$")


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


class NonFiniteFeatureError(StoreError, ValueError):
    """A stored item holds NaN or infinite values (the encoder produced them)."""


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def temp_prefix(kind: str) -> str:
    """``.shard-<host>-<pid>-``: whose temporary file it is, so a later writer can tell a dead one's."""
    return f".{kind}-{_host()}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:           # another user's live process
        return True
    return True


def remove_stale_temp_files(path: str | Path) -> list[Path]:
    """Delete the temporary shard/merge files in ``path`` left by dead writers of this host; returns them.
    Files of live processes, of other hosts (a shared folder) and of unknown naming are kept."""
    removed, host = [], _host()
    for f in Path(path).glob(".*.tmp"):
        m = TEMP_NAME.match(f.name)
        if m and m["host"] == host and int(m["pid"]) != os.getpid() and not _alive(int(m["pid"])):
            try:
                f.unlink()
                removed.append(f)
            except FileNotFoundError:     # another writer removed it first
                pass
    return removed


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
        header, meta = read_safetensors_header(path, max_header=MAX_HEADER)
    except OSError as exc:
        raise CorruptStoreError(f"shard {path} cannot be read: {exc.strerror or exc}") from None
    except SafetensorsHeaderError as exc:
        what = {"short": "truncated or garbage", "length": "truncated"}.get(exc.kind, "garbage")
        raise CorruptStoreError(f"shard {path} is {what}: {exc}") from None
    return [k for k in header if not k.endswith(DERIVED_SUFFIXES)], meta


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
        # float32 rows read once per store object and shared by every dataset over it (see ``rows``)
        self._rows: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.index_builds = 0
        self.problems: list[dict] = []      # bad shards found (and set aside) by a writer's check
        self.removed_temp_files: list[Path] = []   # dead writers' temporary files removed by ``open``

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
                "fingerprint_id": fingerprint_id(dict(fingerprint, _extraction=extraction) if extraction
                                                 else fingerprint)}
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
        removed = remove_stale_temp_files(path)
        store = cls(path)
        store.removed_temp_files = removed
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
                    raise CorruptStoreError(f"{exc}; run `proloc extract` "
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
                                        "run `proloc extract` (or notebook 02) "
                                        "to re-embed its items")
            problems.append({"shard": str(self.path / name), "problem": "missing (deleted or lost in a sync)"})
            stamps.pop(name)
        self._save_verified(stamps)
        self._index = index
        self.index_builds += 1
        self._handles.clear()
        self._rows.clear()
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

    @property
    def end_rows(self) -> bool:
        """Whether the store keeps each sequence's ``</s>`` row (``<key>.end``)."""
        return bool((self.meta.get("extraction") or {}).get(END_ROWS))

    def _check_end_rows(self) -> None:
        if not self.end_rows:
            raise StoreError(f"embedding store {self.path} holds no end-token (</s>) rows (made before they were "
                             "stored, or not a sequence store); run `proloc extract` (or notebook 02) to re-embed it")

    def _tensor(self, key: str, name: str) -> torch.Tensor:
        index = self._ensure_index()
        shard = index.get(key)
        if shard is None:
            raise KeyError(f"'{key}' not in embedding store {self.path}")
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(shard), framework="pt")
        t = self._handles[shard].get_tensor(name)
        if not bool(torch.isfinite(t).all()):
            raise NonFiniteFeatureError(
                f"item '{key}' in embedding store {self.path} (shard {shard.name}) holds NaN or infinite values; "
                f"move that shard aside (e.g. into {self.path / BAD_DIR}) and run `proloc extract` (or notebook 02) "
                "to re-embed its items")
        return t

    def get(self, key: str, pooled: bool = False, *, end_row: bool = False) -> torch.Tensor:
        """The item's rows (a sequence: its residues), its mean over them (``pooled``), or the
        residues with the ``</s>`` row appended (``end_row``; stores with end rows only)."""
        if pooled:
            return self._tensor(key, key + ".mean")
        t = self._tensor(key, key)
        if end_row:
            self._check_end_rows()
            t = torch.cat([t, self._tensor(key, key + END_SUFFIX).reshape(1, -1)])
        return t

    def rows(self, key: str, *, end_row: bool = False) -> torch.Tensor:
        """float32 rows of ``key`` as ``get`` gives them, read once per store object: every dataset
        over this store shares one copy (the residue rows are a view of the rows with ``</s>``).
        Kept until ``close`` (or a re-verification)."""
        if end_row:
            self._check_end_rows()
        hit = self._rows.get(key)
        if hit is None:
            full = self.get(key, end_row=self.end_rows).float()
            hit = self._rows[key] = (full, full[:-1] if self.end_rows else full)
        return hit[0] if end_row else hit[1]

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
    def commit(self, items: dict[str, torch.Tensor], tag: str = "all", *,
               end_rows: dict[str, torch.Tensor] | None = None) -> Path | None:
        """Write one shard atomically (temp file, fsync, rename to its content name, umask
        permissions) and add its keys to the index. Adds ``<key>.mean`` (over ``items``' rows) and,
        in a store with end rows, ``<key>.end`` from ``end_rows`` (one ``</s>`` row per item)."""
        if not items:
            return None
        if self.end_rows:
            lacking = [k for k in items if k not in (end_rows or {})]
            if lacking:
                raise ValueError(f"store {self.path} keeps end-token rows; none given for {lacking[:3]}")
        elif end_rows:
            raise ValueError(f"store {self.path} keeps no end-token rows (open it with extraction "
                             f"{{'{END_ROWS}': True}})")
        tensors = {}
        for k, t in items.items():
            if t.shape[-1] != self.hidden_size:
                raise ValueError(f"item '{k}' has hidden size {t.shape[-1]}, "
                                 f"store {self.path} expects {self.hidden_size}")
            t = t.detach().to("cpu", STORE_DTYPE).contiguous()
            tensors[k] = t
            tensors[k + ".mean"] = t.float().mean(0).to(STORE_DTYPE)
            if self.end_rows:
                end = end_rows[k].detach().to("cpu", STORE_DTYPE).reshape(-1).contiguous()
                if end.numel() != self.hidden_size:
                    raise ValueError(f"end row of item '{k}' has {end.numel()} values, store {self.path} "
                                     f"expects {self.hidden_size}")
                tensors[k + END_SUFFIX] = end
        index = self._ensure_index()
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix("shard"), suffix=".tmp", dir=self.path)
        os.close(fd)
        try:
            with full_disk_as_error(f"a shard of the embedding store {self.path}"):
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
        self._rows.clear()


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
            fd, tmp = tempfile.mkstemp(prefix=temp_prefix("merge"), suffix=".tmp", dir=out.path)
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


def _repair_report(store: EmbeddingStore) -> list[dict]:
    """Bad shards a writer found and set aside, for the report (their items get re-embedded)."""
    return [dict(p) for p in store.problems]


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
            + "; run the rest (`proloc extract` for the other shards, then `proloc merge`) "
            "and rerun this notebook; no manifest was written")
    return store


def store_checksums(folder: str | Path) -> dict:
    """What a stage manifest records of the stores under ``folder`` (``02_embeddings``): each
    store's ``store.json`` with its sha256 and each shard with the checksum its name carries
    (a shard is named by its content and checked against it when a store is verified), keyed
    ``<store>/<file>``. Cheap on stores of any size; a store that gained or lost shards differs."""
    folder = Path(folder)
    out = {}
    for meta in sorted(folder.glob("*/store.json")):
        store = meta.parent.name
        out[f"{store}/store.json"] = file_sha256(meta)
        for shard in sorted(meta.parent.glob(SHARD_GLOB)):
            m = SHARD_NAME.match(shard.name)
            if m:
                out[f"{store}/{shard.name}"] = m["sha"]
    return out
