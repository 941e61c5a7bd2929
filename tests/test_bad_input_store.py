"""extract / merge: bad arguments and bad stores get one clear line and a documented exit code,
and nothing already stored is lost or overwritten."""
import json
import re

import pandas as pd
import pytest
import torch
from PIL import Image

from proloc_lib.cli.main import main as proloc
from proloc_lib.core import manifest
from proloc_lib.features import store
from proloc_lib.data.sequences import sequence_hash

PREFIX = re.compile(r"proloc (extract|merge): ")


def run(argv, capsys):
    rc = proloc(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_line_error(err):
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and "%|" not in ln]  # minus progress bars
    assert len(lines) == 1 and PREFIX.match(lines[0]), err
    assert "Traceback" not in err
    return lines[0]


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def small_store(path, keys, fp=None, hidden=4):
    st = store.EmbeddingStore.open(path, fp or {"model": "m"}, hidden, "image")
    st.commit({k: torch.full((2, hidden), float(i)) for i, k in enumerate(keys)})
    return st


@pytest.mark.parametrize("spec,expect", [("2-3", "must look like 'i/N'"), ("3/3", "out of range"),
                                         ("a/b", "must look like 'i/N'"), ("-1/2", "out of range")])
def test_bad_shard_is_one_line_exit_2(tmp_path, capsys, spec, expect):
    rc, out, err = run(["extract", "--profile", "smoke", "--data-root", str(tmp_path), f"--shard={spec}"], capsys)
    assert rc == 2 and expect in one_line_error(err) and spec in err
    assert not any(tmp_path.iterdir())                            # no work, nothing written


def test_unknown_profile_and_missing_stage_01(tmp_path, capsys):
    rc, _, err = run(["extract", "--profile", "nosuchprofile", "--data-root", str(tmp_path)], capsys)
    assert rc == 2 and "nosuchprofile" in one_line_error(err) and "known profiles" in err
    rc, _, err = run(["extract", "--profile", "smoke", "--data-root", str(tmp_path)], capsys)
    line = one_line_error(err)
    assert rc == 2 and "01_data_assembly" in line and "manifest.json" in line
    assert not any(tmp_path.rglob("*.safetensors"))


def test_usage_errors_are_one_line_too(tmp_path, capsys):
    rc, _, err = run(["extract", "--shard"], capsys)
    assert rc == 2 and "--shard: expected one argument" in one_line_error(err)
    rc, _, err = run(["extrakt"], capsys)
    assert rc == 2 and err.startswith("proloc: unknown command 'extrakt'; did you mean 'extract'?")
    assert err.count("\n") == 1
    rc, _, err = run(["merge", str(tmp_path / "only_dest")], capsys)
    assert rc == 2 and "sources" in one_line_error(err)


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(store.ShardSpecError):
        proloc(["extract", "--shard", "x", "--debug", "--data-root", str(tmp_path)])


def test_merge_of_missing_file_or_non_store_sources(tmp_path, capsys):
    dest = tmp_path / "dest"
    rc, _, err = run(["merge", str(dest), str(tmp_path / "nowhere")], capsys)
    assert rc == 2 and "nowhere" in one_line_error(err) and "does not exist" in err
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("hello")
    rc, _, err = run(["merge", str(dest), str(plain)], capsys)
    assert rc == 2 and "missing store.json" in one_line_error(err)
    afile = tmp_path / "afile.safetensors"
    afile.write_bytes(b"x" * 20)
    rc, _, err = run(["merge", str(dest), str(afile)], capsys)
    assert rc == 2 and "is a file" in one_line_error(err)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "store.json").write_text("{not json")
    rc, _, err = run(["merge", str(dest), str(broken)], capsys)
    assert rc == 2 and "store.json" in one_line_error(err)
    assert not dest.exists()


def test_merge_into_a_wrong_destination_changes_nothing(tmp_path, capsys):
    src = small_store(tmp_path / "src", ["a", "b"])
    other = small_store(tmp_path / "other", ["z"], fp={"model": "another"})
    before = snapshot(other.path)
    rc, _, err = run(["merge", str(other.path), str(src.path)], capsys)
    assert rc == 2 and "another" in one_line_error(err)
    assert snapshot(other.path) == before
    # a non-empty folder that is not a store is never written into
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"jpeg")
    rc, _, err = run(["merge", str(folder), str(src.path)], capsys)
    assert rc == 2 and "not an embedding store" in one_line_error(err)
    assert snapshot(folder) == {folder.joinpath("a.jpg").relative_to(folder): b"jpeg"}
    # stores of different models never merge
    rc, _, err = run(["merge", str(tmp_path / "new"), str(src.path), str(other.path)], capsys)
    assert rc == 2 and "different models" in one_line_error(err)


def test_merge_names_a_corrupt_source_shard_exit_1_and_keeps_the_rest(tmp_path, capsys):
    a = small_store(tmp_path / "a", ["a1", "a2"])
    b = small_store(tmp_path / "b", ["b1"])
    small_store(tmp_path / "b2", ["b2"])
    bad = b.shards()[0]
    bad.write_bytes(bad.read_bytes()[:-7])                      # truncated
    rc, out, err = run(["merge", str(tmp_path / "m"), str(a.path), str(b.path), str(tmp_path / "b2")], capsys)
    assert rc == 1 and bad.name in err and "truncated" in err and "Traceback" not in err
    assert set(store.EmbeddingStore(tmp_path / "m").keys()) == {"a1", "a2", "b2"}


# -- extract on a tiny stage 01 (smoke profile encoders, random weights) ------------------------------
@pytest.fixture
def stage01(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "data"
    s1 = root / "smoke" / "01_data_assembly"
    (root / "smoke" / "images").mkdir(parents=True)
    s1.mkdir(parents=True)
    seqs = ["MKTAYIAKQRQISFVKSHFSRQ", "MSDNGPQNQRNAPRITFGGPSD", "MALWMRLLPLLALLALWGPD"]
    proteins = pd.DataFrame({"protein_id": ["P1", "P2", "P3"], "sequence": seqs,
                             "seq_hash": [sequence_hash(s) for s in seqs]})
    rows = []
    for i in range(4):
        p = root / "smoke" / "images" / f"im{i}.jpg"
        Image.new("RGB", (64 + 8 * i, 64), (20 * i, 100, 200)).save(p)
        rows.append({"image_id": f"img{i}", "protein_id": f"P{1 + i % 3}", "path": f"images/im{i}.jpg"})
    proteins.to_parquet(s1 / "proteins.parquet")
    pd.DataFrame(rows).to_parquet(s1 / "images.parquet")
    man = manifest.build_manifest("01_data_assembly", {"profile": "smoke", "seed": 0}, outputs_dir=s1,
                                  extra={"upstream": {}})   # what notebook 02 checks its input against
    (s1 / "manifest.json").write_text(json.dumps(man))
    return root


def test_extract_finds_a_damaged_shard_names_it_and_re_embeds(stage01, capsys):
    argv = ["extract", "--profile", "smoke", "--data-root", str(stage01), "--device", "cpu"]
    rc, out, err = run(argv, capsys)
    assert rc == 0 and "sequences: 3 embedded" in out and "images: 4 embedded" in out, err
    emb = stage01 / "smoke" / "02_embeddings"
    ref = {k: v.clone() for k, v in ((k, store.EmbeddingStore(emb / "images").get(k))
                                      for k in store.EmbeddingStore(emb / "images").keys())}
    shard = store.EmbeddingStore(emb / "images").shards()[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF                                               # inside the data region
    shard.write_bytes(bytes(data))
    rc, out, err = run(argv, capsys)
    assert rc == 0 and shard.name in out and "corrupted" in out and "images: 4 embedded" in out
    assert "sequences: 0 embedded" in out
    got = store.EmbeddingStore(emb / "images")
    assert set(got.keys()) == set(ref) and all(torch.equal(got.get(k), ref[k]) for k in ref)
    # garbage in place of a store.json: one line, nothing overwritten
    (emb / "sequences" / "store.json").write_text("\x00\x01garbage")
    before = snapshot(emb / "sequences")
    rc, out, err = run(argv + ["--modality", "sequences"], capsys)
    assert rc == 2 and "store.json" in one_line_error(err)
    assert snapshot(emb / "sequences") == before


def test_extract_exits_1_when_items_fail(stage01, capsys):
    (stage01 / "smoke" / "images" / "im2.jpg").write_text("<html>404</html>")
    rc, out, err = run(["extract", "--profile", "smoke", "--data-root", str(stage01), "--device", "cpu",
                        "--modality", "images"], capsys)
    assert rc == 1 and "images: 3 embedded, 1 failures" in out
    assert "could not be embedded" in one_line_error(err) and "failures.json" in err
    failed = store.EmbeddingStore(stage01 / "smoke" / "02_embeddings" / "images").failures()
    assert [f["key"] for f in failed] == ["img2"]
