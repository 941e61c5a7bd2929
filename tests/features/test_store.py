"""The embedding store: stale-safe, shardable and mergeable; it finds every damaged or lost shard and
re-embeds its items; lookups are O(1)."""
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from proloc_lib.core.errors import UserError
from proloc_lib.data.sequences import sequence_hash
from proloc_lib.features import sequence
from proloc_lib.features import store as store_mod
from proloc_lib.features.store import EmbeddingStore, NonFiniteFeatureError
from proloc_lib.training.datasets import FusionDataset, ResidentFeatures, image_samples


@pytest.fixture
def build(counting_encoder, random_sequences):
    """Function (tmp_path, n=24, shard_size=6, name="st") -> (unique sequences by hash, store path)."""
    def build_(tmp_path, n=24, shard_size=6, name="st"):
        unique = {sequence_hash(x): x for x in random_sequences(n)}
        sequence.extract_sequences(unique, counting_encoder(), tmp_path / name, token_budget=200,
                                   shard_size=shard_size, progress=False)
        return unique, tmp_path / name
    return build_


@pytest.fixture
def rerun(counting_encoder):
    """Function (unique, path, verify="full") -> (the encoder, extract's report): extract again."""
    def rerun_(unique, path, verify="full"):
        enc = counting_encoder()
        rep = sequence.extract_sequences(unique, enc, path, token_budget=200, shard_size=6, progress=False,
                                         verify=verify)
        return enc, rep
    return rerun_


def keys_of(shard):
    return store_mod.read_shard_header(shard)[0]


def test_stale_store_is_detected_or_rebuilt(tmp_path, counting_encoder, random_sequences):
    unique = {sequence_hash(x): x for x in random_sequences(5)}
    sequence.extract_sequences(unique, counting_encoder(tag="v1"), tmp_path / "st", progress=False)
    with pytest.raises(store_mod.StaleStoreError, match="counting"):
        sequence.extract_sequences(unique, counting_encoder(tag="v2"), tmp_path / "st", progress=False)
    enc = counting_encoder(tag="v2")
    sequence.extract_sequences(unique, enc, tmp_path / "st", on_stale="recompute", progress=False)
    assert len(enc.seen) == 5
    assert store_mod.EmbeddingStore(tmp_path / "st").meta["fingerprint"]["tag"] == "v2"
    # other settings of the same model are stale too
    with pytest.raises(store_mod.StaleStoreError):
        sequence.extract_sequences(unique, counting_encoder(tag="v2"), tmp_path / "st", max_residues=50, progress=False)


def test_hidden_size_mismatch_is_refused(tmp_path):
    store = store_mod.EmbeddingStore.open(tmp_path / "st", {"m": 1}, 8, "sequence")
    with pytest.raises(ValueError, match="hidden size 4"):
        store.commit({"a": torch.zeros(3, 4)})


def test_shards_merged_equal_single_run(tmp_path, counting_encoder, random_sequences, store_contents):
    unique = {sequence_hash(x): x for x in random_sequences(25)}
    sequence.extract_sequences(unique, counting_encoder(), tmp_path / "single", progress=False)
    parts = []
    for i in range(3):
        sequence.extract_sequences(unique, counting_encoder(), tmp_path / f"part{i}", shard=f"{i}/3", progress=False)
        parts.append(tmp_path / f"part{i}")
    sizes = [len(store_mod.EmbeddingStore(p)) for p in parts]
    assert sum(sizes) == 25 and all(s > 0 for s in sizes)
    merged = store_mod.merge_stores(parts, tmp_path / "merged")
    single = store_contents(store_mod.EmbeddingStore(tmp_path / "single"))
    got = store_contents(merged)
    assert got.keys() == single.keys() and all(torch.equal(got[k], single[k]) for k in got)
    with pytest.raises(ValueError, match="i/N"):
        store_mod.parse_shard("2-3")
    with pytest.raises(ValueError, match="out of range"):
        store_mod.parse_shard("3/3")


def test_lookups_do_not_rebuild_the_index_for_a_100k_key_store(tmp_path, monkeypatch):
    store = store_mod.EmbeddingStore.open(tmp_path / "big", {"m": 1}, 2, "image")
    real = store.commit({"real": torch.ones(3, 2)})
    fake = {f"k{i:06d}": real for i in range(100_000)}
    original = store_mod.EmbeddingStore.verify
    scans = []

    def synthetic_verify(self, **kw):        # the index as a 100,000-key store's scan would build it
        original(self, **kw)
        self._index.update(fake)
        scans.append(1)
        return []

    monkeypatch.setattr(store_mod.EmbeddingStore, "verify", synthetic_verify)
    st = store_mod.EmbeddingStore(tmp_path / "big")
    assert len(st) == 100_001 and len(scans) == 1
    hits = sum(f"k{i:06d}" in st for i in range(0, 200_000, 2))     # half present, half absent
    assert hits == 50_000
    assert st.missing([f"k{i:06d}" for i in range(99_990, 100_010)]) == [f"k{i:06d}" for i in range(100_000, 100_010)]
    keys = st.keys()
    assert all(st.keys() is not None for _ in range(1000))
    assert torch.equal(st.get("real").float(), torch.ones(3, 2))
    # a commit adds its keys to the same index: no new scan, and the live view sees them
    st.commit({"new": torch.zeros(2, 2)})
    assert "new" in st and "new" in keys and len(st) == 100_002
    assert len(scans) == 1 and st.index_builds == 1


def test_shard_names_are_unique_after_a_deletion_and_the_lost_items_come_back(tmp_path, capsys, build, rerun):
    unique, path = build(tmp_path)
    shards = sorted(path.glob("shard-*.safetensors"))
    assert len(shards) >= 3
    before = {s.name: s.read_bytes() for s in shards}
    lost = shards[1]
    lost_keys = set(keys_of(lost))
    lost.unlink()
    enc, rep = rerun(unique, path, verify="quick")
    assert sorted(enc.seen) == sorted(unique[k] for k in lost_keys)          # exactly the lost items again
    assert [p["shard"] for p in rep["repaired"]] == [str(lost)] and "missing" in rep["repaired"][0]["problem"]
    store = store_mod.EmbeddingStore(path)
    assert set(store.keys()) == set(unique)
    for s in shards:                                                         # nothing overwritten
        if s != lost:
            assert s.read_bytes() == before[s.name]
    # and the store stays whole: another run embeds nothing
    enc, rep = rerun(unique, path)
    assert enc.calls == 0 and rep["repaired"] == []


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "flip_data_byte"])
def test_a_damaged_shard_is_named_set_aside_and_re_embedded(tmp_path, damage, store_contents, build, rerun):
    unique, path = build(tmp_path)
    ref = store_contents(store_mod.EmbeddingStore(path))
    victim = sorted(path.glob("shard-*.safetensors"))[2]
    victim_keys = set(keys_of(victim))
    data = bytearray(victim.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 100]
    elif damage == "garbage":
        data = bytearray(os.urandom(len(data)))
    elif damage == "empty":
        data = bytearray()
    else:                                       # inside the data region: the header stays valid
        data[-10] ^= 0xFF
    st = victim.stat()
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))   # even with the old mtime
    # a reader is told which file is bad, never a SafetensorError traceback
    reader = store_mod.EmbeddingStore(path)
    with pytest.raises(store_mod.CorruptStoreError, match=victim.name) as info:
        reader.verify(full=True)
    assert "SafetensorError" not in str(info.value)
    if damage != "flip_data_byte":             # header/size damage is found by the cheap check on open
        with pytest.raises(store_mod.CorruptStoreError, match=victim.name):
            len(store_mod.EmbeddingStore(path))
    # extract (full check) sets it aside, names it, and embeds its items again
    enc, rep = rerun(unique, path)
    assert [p["shard"] for p in rep["repaired"]] == [str(victim)]
    assert (path / "bad" / victim.name).exists()                 # kept for inspection, not deleted
    assert sorted(enc.seen) == sorted(unique[k] for k in victim_keys)
    got = store_contents(store_mod.EmbeddingStore(path))
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)


def test_an_edited_shard_with_a_new_mtime_is_caught_on_open(tmp_path, build):
    unique, path = build(tmp_path)
    victim = sorted(path.glob("shard-*.safetensors"))[0]
    data = bytearray(victim.read_bytes())
    data[-3] ^= 0x01
    victim.write_bytes(bytes(data))            # size unchanged, mtime changed: re-hashed on open
    with pytest.raises(store_mod.CorruptStoreError, match="checksum"):
        store_mod.EmbeddingStore(path).get(next(iter(keys_of(victim))))


def test_old_numbered_shards_are_adopted_under_content_names(tmp_path, store_contents, build, rerun):
    unique, path = build(tmp_path, n=12)
    ref = store_contents(store_mod.EmbeddingStore(path))
    for i, s in enumerate(sorted(path.glob("shard-*.safetensors"))):   # the layout before content names
        s.rename(path / f"shard-all-{i:05d}.safetensors")
    (path / store_mod.VERIFIED).unlink()
    assert store_contents(store_mod.EmbeddingStore(path)).keys() == ref.keys()      # readable as it is
    enc, rep = rerun(unique, path)
    assert enc.calls == 0 and rep["repaired"] == []
    assert all(store_mod.SHARD_NAME.match(s.name) for s in path.glob("shard-*.safetensors"))
    got = store_contents(store_mod.EmbeddingStore(path))
    assert all(torch.equal(got[k], ref[k]) for k in ref)


def test_merge_skips_a_corrupt_source_shard_and_names_it(tmp_path, counting_encoder, random_sequences, rerun):
    unique = {sequence_hash(x): x for x in random_sequences(20)}
    parts = []
    for i in range(2):
        sequence.extract_sequences(unique, counting_encoder(), tmp_path / f"p{i}", shard=f"{i}/2", shard_size=4,
                                   progress=False)
        parts.append(tmp_path / f"p{i}")
    bad = sorted(parts[1].glob("shard-*.safetensors"))[0]
    data = bytearray(bad.read_bytes())
    data[-5] ^= 0xFF
    bad.write_bytes(bytes(data))
    merged = store_mod.merge_stores(parts, tmp_path / "m")
    assert [p["shard"] for p in merged.problems] == [str(bad)] and "corrupted" in merged.problems[0]["problem"]
    assert not set(keys_of(bad)) & set(merged.keys())
    assert len(merged) == len(unique) - len(keys_of(bad))
    enc, _ = rerun(unique, tmp_path / "m")                         # extract fills the gap
    assert sorted(enc.seen) == sorted(unique[k] for k in keys_of(bad))


def test_files_are_written_with_the_users_umask(tmp_path, build):
    old = os.umask(0o022)
    try:
        unique, path = build(tmp_path, n=6)
        store_mod.merge_stores([path], tmp_path / "merged")
    finally:
        os.umask(old)
    for f in [*path.iterdir(), *(tmp_path / "merged").iterdir()]:
        if f.is_file():
            assert stat.S_IMODE(f.stat().st_mode) == 0o644, f


# -- temporary files of dead writers, non-finite items ---------------------------------------------
ROOT = Path(__file__).resolve().parents[2]
LABELS = ["a", "b"]


def _open(path: Path) -> EmbeddingStore:
    return EmbeddingStore.open(path, {"m": "x"}, 4, "sequence")


def test_a_writer_killed_mid_shard_leaves_a_temp_file_the_next_writer_removes(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        import torch
        from proloc_lib.features import store
        def killed(tensors, path, metadata=None):
            open(path, "wb").write(b"half a shard")
            os.kill(os.getpid(), signal.SIGKILL)          # killed while writing
        store.save_file = killed
        s = store.EmbeddingStore.open({str(tmp_path / 'st')!r}, {{"m": "x"}}, 4, "sequence")
        s.commit({{"k": torch.zeros(2, 4)}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    left = [p for p in (tmp_path / "st").iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1 and left[0].name.startswith(f".shard-{store_mod._host()}-")   # host and pid of the writer
    store = _open(tmp_path / "st")
    assert store.removed_temp_files == left and not left[0].exists()
    assert store.commit({"k": torch.ones(2, 4)}) is not None and len(store) == 1


def test_temp_files_of_live_writers_other_hosts_and_unknown_names_are_kept(tmp_path):
    path = tmp_path / "st"
    _open(path)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        host = store_mod._host()
        files = {"live": path / f".shard-{host}-{live.pid}-abc.tmp",
                 "mine": path / f".shard-{host}-{os.getpid()}-x.tmp",
                 "other_host": path / f".shard-elsewhere-{dead.pid}-abc.tmp", "unknown": path / ".shard-abc.tmp",
                 "dead": path / f".merge-{host}-{dead.pid}-abc.tmp"}
        for f in files.values():
            f.write_bytes(b"partial")
        store = _open(path)
        assert store.removed_temp_files == [files["dead"]]
        assert {k for k, f in files.items() if f.exists()} == {"live", "mine", "other_host", "unknown"}
        live.kill()
        live.wait()
        assert _open(path).removed_temp_files == [files["live"]]
    finally:
        live.kill()


def test_a_nan_feature_is_refused_naming_the_item_and_the_store(tmp_path):
    seq = EmbeddingStore.open(tmp_path / "seq", {"m": "s"}, 4, "sequence")
    img = EmbeddingStore.open(tmp_path / "img", {"m": "i"}, 4, "image")
    bad = torch.zeros(3, 4)
    bad[1, 2] = float("nan")
    seq.commit({"good": torch.zeros(3, 4), "bad": bad})
    img.commit({"i1": torch.zeros(2, 4), "i2": torch.full((2, 4), float("inf"))})
    with pytest.raises(NonFiniteFeatureError) as info:
        EmbeddingStore(tmp_path / "seq").get("bad")
    msg = str(info.value)
    assert msg.startswith(f"item 'bad' in embedding store {tmp_path / 'seq'} (shard shard-") and "\n" not in msg
    assert isinstance(info.value, UserError)
    assert EmbeddingStore(tmp_path / "seq").get("good").shape == (3, 4)

    proteins = pd.DataFrame({"protein_id": ["P1", "P2"], "seq_hash": ["good", "bad"], "split": "train",
                             "a": [1, 0], "b": [0, 1]})
    images = pd.DataFrame({"image_id": ["i1", "i2"], "protein_id": ["P1", "P2"]})
    samples = image_samples(images, proteins, LABELS)
    with pytest.raises(NonFiniteFeatureError, match=f"item 'bad' in embedding store {tmp_path / 'seq'}"):
        FusionDataset(samples, LABELS, EmbeddingStore(tmp_path / "seq"), EmbeddingStore(tmp_path / "img"))
    ok = proteins.assign(seq_hash=["good", "good"])
    ds = FusionDataset(image_samples(images, ok, LABELS), LABELS, EmbeddingStore(tmp_path / "seq"),
                       EmbeddingStore(tmp_path / "img"))
    with pytest.raises(NonFiniteFeatureError, match=f"item 'i2' in embedding store {tmp_path / 'img'}"):
        ResidentFeatures(ds, "cpu")


def test_end_rows_are_stored_apart_and_residue_reads_are_unchanged(tmp_path, counting_encoder):
    """Extraction keeps each sequence's </s> row as <key>.end: get() and the pooled vector stay the
    residues (baselines, light attention), get(end_row=True) appends the </s> row."""
    seqs = {"a": "MKTAYIAK", "b": "GLSDGEWQQVLNVWGKVEAD"}
    enc = counting_encoder()
    sequence.extract_sequences(seqs, enc, tmp_path / "st", progress=False)
    st = EmbeddingStore(tmp_path / "st")
    assert st.end_rows and sorted(st.keys()) == ["a", "b"]           # the .end tensors are not items
    for k, s in seqs.items():
        residues = counting_encoder().embed_batch([s])[0].half()
        assert torch.equal(st.get(k), residues)
        torch.testing.assert_close(st.get(k, pooled=True).float(), residues.float().mean(0), atol=2e-3, rtol=0)
        full = st.get(k, end_row=True)
        assert full.shape == (len(s) + 1, 8) and torch.equal(full[:-1], residues)
        assert torch.equal(full[-1], torch.full((8,), -float(len(s))).half())   # the stand-in's </s> row


def test_a_store_made_without_end_rows_is_stale_for_extraction_and_readable_for_residues(tmp_path, counting_encoder):
    seqs = {"a": "MKTAYIAK", "b": "GLSDGEWQQ"}
    enc = counting_encoder()
    fp = dict(enc.fingerprint(), max_residues=1000, long_policy="truncate")   # what extraction records
    old = EmbeddingStore.open(tmp_path / "st", fp, 8, "sequence")          # as written before end rows
    old.commit({k: enc.embed_batch([s])[0] for k, s in seqs.items()})
    reader = EmbeddingStore(tmp_path / "st")
    assert not reader.end_rows and reader.get("a").shape == (8, 8)       # residues: readable as before
    with pytest.raises(store_mod.StoreError, match=r"no end-token .*proloc extract"):
        reader.get("a", end_row=True)
    with pytest.raises(store_mod.StaleStoreError, match="end_rows"):
        sequence.extract_sequences(seqs, counting_encoder(), tmp_path / "st", progress=False)
    again = counting_encoder()
    sequence.extract_sequences(seqs, again, tmp_path / "st", on_stale="recompute", progress=False)
    assert sorted(again.seen) == sorted(seqs.values())                    # every sequence re-embedded
    assert EmbeddingStore(tmp_path / "st").get("b", end_row=True).shape == (10, 8)
    with pytest.raises(ValueError, match="end-token rows"):               # a writer must give them
        EmbeddingStore(tmp_path / "st").commit({"c": torch.zeros(3, 8)})


def test_windows_take_the_end_row_of_the_window_that_ends_the_sequence(counting_encoder):
    """Long sequences in windows: the </s> row comes from the last window (the stand-in's </s>
    row is minus the length it was given: the last window's, not the whole sequence's)."""
    seq = "ACDEFGHIKLMNPQRSTVWY" * 2                                      # 40 residues, windows of 16
    rows = sequence.embed_sequence_long(counting_encoder(), seq, 16, end_token=True)
    assert rows.shape == (41, 8) and torch.equal(rows[-1], torch.full((8,), -16.0))
    assert torch.equal(rows[:-1], sequence.embed_sequence_long(counting_encoder(), seq, 16))
