"""Benchmarks: exact store-size arithmetic, a fair padded-vs-bucketed comparison, the CLI's JSON.

No timing assertions: speed depends on the machine.
"""
import json
import runpy
import subprocess
import sys

import pytest
import torch

from proloc_lib.bench import common, store
from proloc_lib.cli.main import main as proloc
from proloc_lib.core import network, paths
from proloc_lib.features import encoders
from proloc_lib.profiles import loader as profiles

SEQ_DEMO = profiles.load_profile("demo")["embeddings"]["sequence"]
AA = "ACDEFGHIKLMNPQRSTVWY"


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return encoders.load_sequence_encoder(SEQ_DEMO, device="cpu", cache_dir=str(tmp_path_factory.mktemp("vocab")))


def test_store_size_matches_hand_arithmetic(tmp_path, write_reference):
    # 6 image rows of 2 proteins: 4 images of a 10-residue protein, 2 of a 20-residue one
    csv = write_reference(tmp_path / "ref.csv", {"ENSG00000000001": ("M" + AA[:9], 4),
                                                 "ENSG00000000002": (AA, 2)})
    r = store.store_size(csv)
    assert (r["n_rows"], r["n_proteins"], r["n_unique_sequences"], r["L_max"]) == (6, 2, 2, 20)
    assert r["authors_bytes"] == 6 * 20 * 1024 * 4 == 491_520
    assert r["authors_bytes_with_end_token"] == 6 * 21 * 1024 * 4
    # float16: (10 + 20) residue rows + 2 mean rows + 2 </s> rows, 1024 wide, 2 bytes each
    assert r["ours_payload_bytes"] == (10 + 20 + 2 + 2) * 1024 * 2 == 69_632
    # measured on disk: payload plus safetensors headers and store.json, a few KB at most
    assert 0 < r["ours_overhead_bytes"] < 8192
    assert r["ours_bytes"] == r["ours_payload_bytes"] + r["ours_overhead_bytes"]
    assert r["store_size_ratio"] == pytest.approx(491_520 / r["ours_bytes"])
    assert 1 < r["store_size_ratio"] < 491_520 / 69_632  # ~7.1x would need zero overhead


def test_reference_set_is_at_least_50x_smaller(reference_dir):
    r = store.store_size(common.reference_csv_path(reference_dir))
    assert (r["n_rows"], r["n_proteins"], r["n_unique_sequences"]) == (566, 54, 54)
    assert r["L_max"] == 4061
    assert r["authors_bytes"] == 566 * 4061 * 1024 * 4
    assert r["store_size_ratio"] >= 50


def test_padded_and_bucketed_give_the_same_embeddings(encoder):
    seqs = ["MKTAYIAKQR", "MSEQNNTEMTFQIQRIYTKDISFEAPNAPHVFQKDW", "GAVLIPFMW", "MDDDKK" * 7]
    padded = store.embed_padded(encoder, seqs, pad_to=60, batch_size=3)  # padded past every length
    bucketed = store.embed_bucketed(encoder, seqs, token_budget=40)
    direct = encoder.embed_batch(seqs)
    for s, p, b, d in zip(seqs, padded, bucketed, direct):
        assert p.shape == b.shape == (len(s), encoder.hidden_size)
        torch.testing.assert_close(p, b, atol=1e-4, rtol=0)
        torch.testing.assert_close(b, d, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="longer than pad_to"):
        store.embed_padded(encoder, seqs, pad_to=20, batch_size=2)


def test_mode_shapes_count_padding():
    seqs = ["A" * 10, "A" * 20, "A" * 100]
    padded = store._mode_shape("padded", seqs, token_budget=50, batch_size=2, pad_to=100)
    assert padded["n_batches"] == 2 and padded["tokens_fed"] == 3 * 101
    bucketed = store._mode_shape("bucketed", seqs, token_budget=50, batch_size=2, pad_to=100)
    assert bucketed["tokens_fed"] == 2 * 21 + 101 and bucketed["n_batches"] == 2
    assert bucketed["padding_fraction"] < padded["padding_fraction"]


def test_in_process_bucketing_reports_both_modes(encoder):
    seqs = ["M" + AA * k for k in (1, 2, 4)]
    r = store.bucketing(seqs, encoder, token_budget=90, batch_size_padded=2, repeats=1)
    assert r["bucketing_speedup"] > 0 and r["padded_vs_bucketed_max_abs_diff"] < 1e-4
    for mode in ("padded", "bucketed"):
        assert r[mode]["seconds"] > 0 and r[mode]["peak_mem_mb"] >= 0
        assert r[mode]["residues_per_s"] == pytest.approx(sum(map(len, seqs)) / r[mode]["seconds"])


def test_cli_prints_json(tmp_path, capsys, write_reference):
    csv = write_reference(tmp_path / "ref.csv", {"ENSG00000000001": ("M" + AA, 3),
                                                 "ENSG00000000002": ("M" + AA * 3, 2),
                                                 "ENSG00000000003": ("MK" * 8, 1)})
    out = tmp_path / "bench.json"
    rc = proloc(["bench", "--reference", str(csv), "--device", "cpu", "--token-budget", "64", "--repeats", "1",
                 "--no-isolate", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)  # stdout holds exactly one JSON object
    assert {"store_size_ratio", "bucketing_speedup", "bucketing_speedup_first_runs", "peak_mem_mb_padded",
            "peak_mem_mb_bucketed"} <= set(res)
    assert res["random_weights"] is True and res["model"] == SEQ_DEMO["model"]
    assert res["store"]["n_rows"] == 6 and res["n_sequences"] == 3 and res["token_budget"] == 64
    assert res["bucketing"]["padded_vs_bucketed_max_abs_diff"] < 1e-4
    assert json.loads(out.read_text()) == res


def run_module(tmp_path, write_reference, *extra):
    csv = write_reference(tmp_path / "ref.csv", {"ENSG00000000001": ("M" + AA, 2),
                                                 "ENSG00000000002": ("M" + AA * 2, 1)})
    p = subprocess.run([sys.executable, "-m", "proloc_lib", "bench", "--reference", str(csv),
                        "--device", "cpu", "--token-budget", "64", "--repeats", "1",
                        "--cache-dir", str(tmp_path / "cache"), *extra],
                       capture_output=True, text=True, cwd=paths.PROJECT_ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)  # progress goes to stderr; stdout is the JSON alone
    assert res["store_size_ratio"] > 1 and res["bucketing_speedup"] > 0
    assert res["bucketing"]["padded_vs_bucketed_max_abs_diff"] < 1e-4
    return res


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
def test_module_entry_point(tmp_path, monkeypatch, capsys, write_reference):
    """The old entry ``python -m proloc_lib.embeddings bench ...`` forwards to ``proloc bench ...``.

    Run through runpy in this process (a fresh interpreter costs ~10 s of imports here); the
    slow test below runs the real ``python -m`` command.
    """
    csv = write_reference(tmp_path / "ref.csv", {"ENSG00000000001": ("M" + AA, 2)})
    monkeypatch.setattr(sys, "argv", ["embeddings", "bench", "--reference", str(csv), "--device", "cpu",
                                      "--token-budget", "64", "--repeats", "1", "--no-isolate",
                                      "--cache-dir", str(tmp_path / "cache")])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("proloc_lib.embeddings", run_name="__main__")
    assert exit_.value.code == 0
    res = json.loads(capsys.readouterr().out)
    assert res["store"]["n_rows"] == 2 and res["bucketing"]["isolated"] is False


def test_mode_worker_in_this_process(tmp_path):
    """What each spawned process runs, minus the spawn (covered by the slow test below)."""
    seqs = ["M" + AA, "M" + AA * 3, "MK" * 8]
    job = {"model_cfg": SEQ_DEMO, "device": "cpu", "cache_dir": str(tmp_path / "cache"), "seqs": seqs,
           "token_budget": 64, "batch_size": 2, "pad_to": 61, "repeats": 1, "threads": torch.get_num_threads(),
           "n_check": 2, "max_repeat_seconds": 20.0}
    padded = store._mode_worker(dict(job, mode="padded"))
    bucketed = store._mode_worker(dict(job, mode="bucketed"))
    assert padded["padded_vs_bucketed_max_abs_diff"] < 1e-4 and "outputs" not in padded
    assert padded["tokens_fed"] == 3 * 62 and bucketed["tokens_fed"] < padded["tokens_fed"]


@pytest.mark.slow  # ~20-30 s: three fresh interpreters
def test_module_entry_point_isolated(tmp_path, write_reference):
    assert run_module(tmp_path, write_reference)["bucketing"]["isolated"] is True


def test_full_model_fails_fast_offline(tmp_path, monkeypatch, write_reference):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    csv = write_reference(tmp_path / "ref.csv", {"ENSG00000000001": ("M" + AA, 1)})
    with pytest.raises(network.OfflineError, match="HF_HUB_OFFLINE"):
        store.run(reference=csv, device="cpu", full_model=True, cache_dir=str(tmp_path / "empty"))
