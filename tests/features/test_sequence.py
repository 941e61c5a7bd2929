"""Sequence extraction: each unique sequence embedded once at its true length, resumable, long
sequences truncated or windowed, bad items listed while the rest goes on; under the full profile
no test sequence is cut (the published prott5.py keeps FLG's 4,061 residues)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from proloc_lib.core.paths import reference_dir
from proloc_lib.data.hpa import read_authors_csv
from proloc_lib.data.sequences import sequence_hash
from proloc_lib.features import image, sequence
from proloc_lib.features import store as store_mod
from proloc_lib.profiles.loader import load_profile


def test_each_unique_sequence_embedded_once_at_true_length(tmp_path, counting_encoder, random_sequences):
    s = random_sequences(10)
    rows = s + s[:4]                               # duplicates, as images of the same protein
    unique = {sequence_hash(x): x for x in rows}
    enc = counting_encoder()
    rep = sequence.extract_sequences(unique, enc, tmp_path / "st", token_budget=300, shard_size=4, progress=False)
    assert rep["embedded"] == 10 and sorted(enc.seen) == sorted(s)
    store = store_mod.EmbeddingStore(tmp_path / "st")
    for x in s:
        t = store.get(sequence_hash(x))
        assert t.shape == (len(x), 8) and t.dtype == torch.float16
        torch.testing.assert_close(store.get(sequence_hash(x), pooled=True).float(), t.float().mean(0),
                                   atol=2e-3, rtol=0)
    # a second run embeds nothing
    enc2 = counting_encoder()
    sequence.extract_sequences(unique, enc2, tmp_path / "st", token_budget=300, progress=False)
    assert enc2.calls == 0


def test_interrupted_run_resumes_to_identical_store(tmp_path, counting_encoder, random_sequences, store_contents):
    unique = {sequence_hash(x): x for x in random_sequences(30)}
    sequence.extract_sequences(unique, counting_encoder(), tmp_path / "ref", token_budget=200, shard_size=3,
                               progress=False)
    with pytest.raises(KeyboardInterrupt):
        sequence.extract_sequences(unique, counting_encoder(fail_after=4), tmp_path / "res", token_budget=200,
                            shard_size=3, progress=False)
    partial = store_mod.EmbeddingStore(tmp_path / "res")
    assert 0 < len(partial) < 30 and not list((tmp_path / "res").glob("*.tmp"))
    enc = counting_encoder()
    sequence.extract_sequences(unique, enc, tmp_path / "res", token_budget=200, shard_size=3, progress=False)
    assert len(enc.seen) == 30 - len(partial)      # only the missing ones
    ref, res = (store_contents(store_mod.EmbeddingStore(tmp_path / "ref")),
                store_contents(store_mod.EmbeddingStore(tmp_path / "res")))
    assert ref.keys() == res.keys()
    for k in ref:
        assert torch.equal(ref[k], res[k])


def test_long_sequences_windows_and_truncation(tmp_path, counting_encoder):
    long = "ACDEFGHIKLMNPQRSTVWY" * 6                     # 120 residues
    key = sequence_hash(long)
    sequence.extract_sequences({key: long}, counting_encoder(), tmp_path / "t", max_residues=50, progress=False)
    assert store_mod.EmbeddingStore(tmp_path / "t").get(key).shape == (50, 8)
    rep = sequence.extract_sequences({key: long}, counting_encoder(), tmp_path / "w", max_residues=50,
                              long_policy="windows", progress=False)
    assert rep["long_sequences"] == 1
    assert store_mod.EmbeddingStore(tmp_path / "w").get(key).shape == (120, 8)


def test_bad_sequences_and_images_are_listed_and_the_rest_goes_on(tmp_path, counting_encoder, random_sequences):
    good = random_sequences(3)
    items = {sequence_hash(x): x for x in good}
    items["bad"] = "MK1T"
    items["empty"] = ""
    rep = sequence.extract_sequences(items, counting_encoder(), tmp_path / "s", progress=False)
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


class ResidueEncoder:
    """One row per residue given, and the </s> row (-1) when asked."""
    hidden_size = 2

    def fingerprint(self):
        return {"model_id": "residues"}

    def embed_batch(self, seqs, *, end_token=False):
        rows = [torch.arange(len(s), dtype=torch.float32)[:, None].repeat(1, 2) for s in seqs]
        return [torch.cat([r, -torch.ones(1, 2)]) for r in rows] if end_token else rows


@pytest.mark.skipif(not (reference_dir() / "proloc_ihs_test.csv").exists(), reason="reference table not found")
def test_no_test_sequence_is_cut_under_the_full_profile(tmp_path):
    ref = read_authors_csv(reference_dir() / "proloc_ihs_test.csv")
    longest = ref.loc[ref["sequence"].str.len().idxmax()]
    assert len(longest["sequence"]) == 4061                      # FLG, the longest test protein
    emb = load_profile("full")["embeddings"]
    rep = sequence.extract_sequences({"flg": longest["sequence"]}, ResidueEncoder(), tmp_path / "s",
                                     max_residues=emb["max_residues"], long_policy=emb["long_policy"], progress=False)
    assert rep["long_sequences"] == 0 and store_mod.EmbeddingStore(tmp_path / "s").get("flg").shape[0] == 4061
