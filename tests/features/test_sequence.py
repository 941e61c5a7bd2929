"""The embedding store: once per unique item, resumable, stale-safe, shardable."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from proloc_lib.data.sequences import sequence_hash
from proloc_lib.features import batching, image, sequence
from proloc_lib.features import store as store_mod


class CountingEncoder:
    """A deterministic stand-in encoder: embedding of residue i depends on the residue and i."""

    hidden_size = 8

    def __init__(self, fail_after=None, tag="v1"):
        self.calls, self.seen, self.fail_after, self.tag = 0, [], fail_after, tag

    def fingerprint(self):
        return {"model_id": "counting", "tag": self.tag}

    def embed_batch(self, seqs):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        self.seen += list(seqs)
        out = []
        for s in seqs:
            codes = torch.tensor([ord(c) for c in s], dtype=torch.float32)
            pos = torch.arange(len(s), dtype=torch.float32)
            out.append(torch.stack([codes / 100 + k * pos / 50 for k in range(self.hidden_size)], 1))
        return out


def seqs(n=40, seed=0):
    rng = np.random.default_rng(seed)
    aa = list("ACDEFGHIKLMNPQRSTVWY")
    return [("".join(rng.choice(aa, size=int(rng.integers(5, 120))))) for _ in range(n)]


def as_dict(store):
    return {k: store.get(k) for k in sorted(store.keys())}


def test_each_unique_sequence_embedded_once_at_true_length(tmp_path):
    s = seqs(10)
    rows = s + s[:4]                               # duplicates, as images of the same protein
    unique = {sequence_hash(x): x for x in rows}
    enc = CountingEncoder()
    rep = sequence.extract_sequences(unique, enc, tmp_path / "st", token_budget=300, shard_size=4, progress=False)
    assert rep["embedded"] == 10 and sorted(enc.seen) == sorted(s)
    store = store_mod.EmbeddingStore(tmp_path / "st")
    for x in s:
        t = store.get(sequence_hash(x))
        assert t.shape == (len(x), 8) and t.dtype == torch.float16
        torch.testing.assert_close(store.get(sequence_hash(x), pooled=True).float(), t.float().mean(0), atol=2e-3, rtol=0)
    # a second run embeds nothing
    enc2 = CountingEncoder()
    sequence.extract_sequences(unique, enc2, tmp_path / "st", token_budget=300, progress=False)
    assert enc2.calls == 0


def test_length_buckets_respect_budget_and_cover_all():
    lengths = {f"k{i}": n for i, n in enumerate([5, 500, 20, 18, 490, 7, 3000])}
    batches = batching.length_buckets(lengths, token_budget=1000)
    assert sorted(k for b in batches for k in b) == sorted(lengths)
    for b in batches:
        assert len(b) == 1 or max(lengths[k] for k in b) * len(b) <= 1000


def test_interrupted_run_resumes_to_identical_store(tmp_path):
    unique = {sequence_hash(x): x for x in seqs(30)}
    sequence.extract_sequences(unique, CountingEncoder(), tmp_path / "ref", token_budget=200, shard_size=3, progress=False)
    with pytest.raises(KeyboardInterrupt):
        sequence.extract_sequences(unique, CountingEncoder(fail_after=4), tmp_path / "res", token_budget=200,
                            shard_size=3, progress=False)
    partial = store_mod.EmbeddingStore(tmp_path / "res")
    assert 0 < len(partial) < 30 and not list((tmp_path / "res").glob("*.tmp"))
    enc = CountingEncoder()
    sequence.extract_sequences(unique, enc, tmp_path / "res", token_budget=200, shard_size=3, progress=False)
    assert len(enc.seen) == 30 - len(partial)      # only the missing ones
    ref, res = as_dict(store_mod.EmbeddingStore(tmp_path / "ref")), as_dict(store_mod.EmbeddingStore(tmp_path / "res"))
    assert ref.keys() == res.keys()
    for k in ref:
        assert torch.equal(ref[k], res[k])


def test_stale_store_is_detected_or_rebuilt(tmp_path):
    unique = {sequence_hash(x): x for x in seqs(5)}
    sequence.extract_sequences(unique, CountingEncoder(tag="v1"), tmp_path / "st", progress=False)
    with pytest.raises(store_mod.StaleStoreError, match="counting"):
        sequence.extract_sequences(unique, CountingEncoder(tag="v2"), tmp_path / "st", progress=False)
    enc = CountingEncoder(tag="v2")
    sequence.extract_sequences(unique, enc, tmp_path / "st", on_stale="recompute", progress=False)
    assert len(enc.seen) == 5
    assert store_mod.EmbeddingStore(tmp_path / "st").meta["fingerprint"]["tag"] == "v2"
    # other settings of the same model are stale too
    with pytest.raises(store_mod.StaleStoreError):
        sequence.extract_sequences(unique, CountingEncoder(tag="v2"), tmp_path / "st", max_residues=50, progress=False)


def test_hidden_size_mismatch_is_refused(tmp_path):
    store = store_mod.EmbeddingStore.open(tmp_path / "st", {"m": 1}, 8, "sequence")
    with pytest.raises(ValueError, match="hidden size 4"):
        store.commit({"a": torch.zeros(3, 4)})


def test_shards_merged_equal_single_run(tmp_path):
    unique = {sequence_hash(x): x for x in seqs(25)}
    sequence.extract_sequences(unique, CountingEncoder(), tmp_path / "single", progress=False)
    parts = []
    for i in range(3):
        sequence.extract_sequences(unique, CountingEncoder(), tmp_path / f"part{i}", shard=f"{i}/3", progress=False)
        parts.append(tmp_path / f"part{i}")
    sizes = [len(store_mod.EmbeddingStore(p)) for p in parts]
    assert sum(sizes) == 25 and all(s > 0 for s in sizes)
    merged = store_mod.merge_stores(parts, tmp_path / "merged")
    single = as_dict(store_mod.EmbeddingStore(tmp_path / "single"))
    got = as_dict(merged)
    assert got.keys() == single.keys() and all(torch.equal(got[k], single[k]) for k in got)
    with pytest.raises(ValueError, match="i/N"):
        store_mod.parse_shard("2-3")
    with pytest.raises(ValueError, match="out of range"):
        store_mod.parse_shard("3/3")


def test_long_sequences_windows_and_truncation(tmp_path):
    long = "ACDEFGHIKLMNPQRSTVWY" * 6                     # 120 residues
    key = sequence_hash(long)
    sequence.extract_sequences({key: long}, CountingEncoder(), tmp_path / "t", max_residues=50, progress=False)
    assert store_mod.EmbeddingStore(tmp_path / "t").get(key).shape == (50, 8)
    rep = sequence.extract_sequences({key: long}, CountingEncoder(), tmp_path / "w", max_residues=50,
                              long_policy="windows", progress=False)
    assert rep["long_sequences"] == 1
    assert store_mod.EmbeddingStore(tmp_path / "w").get(key).shape == (120, 8)


def test_bad_sequences_and_images_are_listed_and_the_rest_goes_on(tmp_path):
    good = seqs(3)
    items = {sequence_hash(x): x for x in good}
    items["bad"] = "MK1T"
    items["empty"] = ""
    rep = sequence.extract_sequences(items, CountingEncoder(), tmp_path / "s", progress=False)
    assert rep["embedded"] == 3
    failed = {f["key"]: f["error"] for f in store_mod.EmbeddingStore(tmp_path / "s").failures()}
    assert set(failed) == {"bad", "empty"} and "non-amino-acid" in failed["bad"] and "empty" in failed["empty"]

    class ImgEnc:
        hidden_size = 4

        def fingerprint(self):
            return {"model_id": "img"}

        def embed_batch(self, images):
            return torch.stack([torch.full((3, 4), float(np.asarray(im).mean())) for im in images])

    ok = tmp_path / "ok.jpg"
    Image.new("RGB", (64, 64), (10, 20, 30)).save(ok)
    junk = tmp_path / "junk.jpg"
    junk.write_text("<html>404</html>")
    rep = image.extract_images({"ok": ok, "junk": junk}, ImgEnc(), tmp_path / "i", progress=False)
    assert rep["embedded"] == 1 and [f["key"] for f in rep["failures"]] == ["junk"]
    assert json.loads((tmp_path / "i" / "failures.json").read_text())[0]["path"] == str(junk)


def test_high_resolution_mode_embeds_a_bag_of_tiles(tmp_path):
    class TileEnc:
        hidden_size = 2

        def fingerprint(self):
            return {"model_id": "tiles"}

        def embed_batch(self, images):   # 3 tokens per tile: tile mean colour and width
            return torch.stack([torch.tensor([[float(np.asarray(im).mean()), im.size[0]]] * 3) for im in images])

    img = Image.new("RGB", (300, 300), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 100, 100))     # only the top-left tile is white
    path = tmp_path / "big.png"
    img.save(path)
    image.extract_images({"big": path}, TileEnc(), tmp_path / "grid", grid=3, progress=False)
    store = store_mod.EmbeddingStore(tmp_path / "grid")
    tokens = store.get("big").float()
    assert tokens.shape == (9 * 3, 2)
    assert tokens[0, 0] == 255 and (tokens[3:, 0] == 0).all() and (tokens[:, 1] == 100).all()
    assert store.meta["fingerprint"]["crop_grid"] == 3
    with pytest.raises(store_mod.StaleStoreError):      # whole-image and tiled stores never mix
        image.extract_images({"big": path}, TileEnc(), tmp_path / "grid", grid=1, progress=False)
