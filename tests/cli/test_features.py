"""`proloc extract` / `proloc merge`: bad arguments and bad stores get one clear line and a documented
exit code, and nothing already stored is lost or overwritten."""
import re

import pytest
import torch

from proloc_lib.cli.main import main as proloc
from proloc_lib.features import store

PREFIX = re.compile(r"proloc (extract|merge): ")


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
def test_bad_shard_is_one_line_exit_2(tmp_path, spec, expect, run_proloc):
    rc, out, err = run_proloc(["extract", "--profile", "smoke", "--data-root", str(tmp_path), f"--shard={spec}"])
    assert rc == 2 and expect in one_line_error(err) and spec in err
    assert not any(tmp_path.iterdir())                            # no work, nothing written


def test_unknown_profile_and_missing_stage_01(tmp_path, run_proloc):
    rc, _, err = run_proloc(["extract", "--profile", "nosuchprofile", "--data-root", str(tmp_path)])
    assert rc == 2 and "nosuchprofile" in one_line_error(err) and "known profiles" in err
    rc, _, err = run_proloc(["extract", "--profile", "smoke", "--data-root", str(tmp_path)])
    line = one_line_error(err)
    assert rc == 2 and "01_data_assembly" in line and "manifest.json" in line
    assert not any(tmp_path.rglob("*.safetensors"))


def test_usage_errors_are_one_line_too(tmp_path, run_proloc):
    rc, _, err = run_proloc(["extract", "--shard"])
    assert rc == 2 and "--shard: expected one argument" in one_line_error(err)
    rc, _, err = run_proloc(["extrakt"])
    assert rc == 2 and err.startswith("proloc: unknown command 'extrakt'; did you mean 'extract'?")
    assert err.count("\n") == 1
    rc, _, err = run_proloc(["merge", str(tmp_path / "only_dest")])
    assert rc == 2 and "sources" in one_line_error(err)


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(store.ShardSpecError):
        proloc(["extract", "--shard", "x", "--debug", "--data-root", str(tmp_path)])


def test_merge_of_missing_file_or_non_store_sources(tmp_path, run_proloc):
    dest = tmp_path / "dest"
    rc, _, err = run_proloc(["merge", str(dest), str(tmp_path / "nowhere")])
    assert rc == 2 and "nowhere" in one_line_error(err) and "does not exist" in err
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("hello")
    rc, _, err = run_proloc(["merge", str(dest), str(plain)])
    assert rc == 2 and "missing store.json" in one_line_error(err)
    afile = tmp_path / "afile.safetensors"
    afile.write_bytes(b"x" * 20)
    rc, _, err = run_proloc(["merge", str(dest), str(afile)])
    assert rc == 2 and "is a file" in one_line_error(err)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "store.json").write_text("{not json")
    rc, _, err = run_proloc(["merge", str(dest), str(broken)])
    assert rc == 2 and "store.json" in one_line_error(err)
    assert not dest.exists()


def test_merge_into_a_wrong_destination_changes_nothing(tmp_path, run_proloc):
    src = small_store(tmp_path / "src", ["a", "b"])
    other = small_store(tmp_path / "other", ["z"], fp={"model": "another"})
    before = snapshot(other.path)
    rc, _, err = run_proloc(["merge", str(other.path), str(src.path)])
    assert rc == 2 and "another" in one_line_error(err)
    assert snapshot(other.path) == before
    # a non-empty folder that is not a store is never written into
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"jpeg")
    rc, _, err = run_proloc(["merge", str(folder), str(src.path)])
    assert rc == 2 and "not an embedding store" in one_line_error(err)
    assert snapshot(folder) == {folder.joinpath("a.jpg").relative_to(folder): b"jpeg"}
    # stores of different models never merge
    rc, _, err = run_proloc(["merge", str(tmp_path / "new"), str(src.path), str(other.path)])
    assert rc == 2 and "different models" in one_line_error(err)


def test_merge_names_a_corrupt_source_shard_exit_1_and_keeps_the_rest(tmp_path, run_proloc):
    a = small_store(tmp_path / "a", ["a1", "a2"])
    b = small_store(tmp_path / "b", ["b1"])
    small_store(tmp_path / "b2", ["b2"])
    bad = b.shards()[0]
    bad.write_bytes(bad.read_bytes()[:-7])                      # truncated
    rc, out, err = run_proloc(["merge", str(tmp_path / "m"), str(a.path), str(b.path), str(tmp_path / "b2")])
    assert rc == 1 and bad.name in err and "truncated" in err and "Traceback" not in err
    assert set(store.EmbeddingStore(tmp_path / "m").keys()) == {"a1", "a2", "b2"}


# -- extract on a tiny stage 01 (the `stage01` fixture: smoke profile encoders, random weights) ---------


def test_extract_finds_a_damaged_shard_names_it_and_re_embeds(stage01, run_proloc):
    argv = ["extract", "--profile", "smoke", "--data-root", str(stage01), "--device", "cpu"]
    rc, out, err = run_proloc(argv)
    assert rc == 0 and "sequences: 3 embedded" in out and "images: 4 embedded" in out, err
    emb = stage01 / "smoke" / "02_embeddings"
    ref = {k: v.clone() for k, v in ((k, store.EmbeddingStore(emb / "images").get(k))
                                      for k in store.EmbeddingStore(emb / "images").keys())}
    shard = store.EmbeddingStore(emb / "images").shards()[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF                                               # inside the data region
    shard.write_bytes(bytes(data))
    rc, out, err = run_proloc(argv)
    assert rc == 0 and shard.name in out and "corrupted" in out and "images: 4 embedded" in out
    assert "sequences: 0 embedded" in out
    got = store.EmbeddingStore(emb / "images")
    assert set(got.keys()) == set(ref) and all(torch.equal(got.get(k), ref[k]) for k in ref)
    # garbage in place of a store.json: one line, nothing overwritten
    (emb / "sequences" / "store.json").write_text("\x00\x01garbage")
    before = snapshot(emb / "sequences")
    rc, out, err = run_proloc(argv + ["--modality", "sequences"])
    assert rc == 2 and "store.json" in one_line_error(err)
    assert snapshot(emb / "sequences") == before


def test_extract_exits_1_when_items_fail(stage01, run_proloc):
    (stage01 / "smoke" / "images" / "im2.jpg").write_text("<html>404</html>")
    rc, out, err = run_proloc(["extract", "--profile", "smoke", "--data-root", str(stage01), "--device", "cpu",
                        "--modality", "images"])
    assert rc == 1 and "images: 3 embedded, 1 failures" in out
    assert "could not be embedded" in one_line_error(err) and "failures.json" in err
    failed = store.EmbeddingStore(stage01 / "smoke" / "02_embeddings" / "images").failures()
    assert [f["key"] for f in failed] == ["img2"]
