"""The full profile's data path on the real Vislocas tables, through the offline mirror.

``proloc_lib.data.mirror`` serves the real tables (read in place from ../shared/reference/vislocas),
a synthetic stand-in image for every image URL and UniProt ID mapping in the real protocol.
The full profile's ``data`` section pointed at it (``mirror=``) builds the protein and image
tables; here on a seeded subsample of each table's proteins (``data.max_proteins``) to keep
CI fast.
"""
import functools
import hashlib
import http.client
import io
import json
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from PIL import Image

from proloc_lib.core import manifest, paths, provenance
from proloc_lib.core.fileio import file_sha256
from proloc_lib.data import build, datacard, download, hpa, mirror, splits
from proloc_lib.data.images import load_image
from proloc_lib.data.labels import LABELS
from proloc_lib.profiles import loader as profiles
from proloc_lib.stages import common

REFERENCE = paths.reference_dir()
VISLOCAS = REFERENCE / "vislocas"
pytestmark = pytest.mark.skipif(not (VISLOCAS / "data_train.csv").exists(), reason=f"{VISLOCAS} not found")
N_PER_FILE, SUBSAMPLE_SEED = 4, 17  # 4 proteins of each table, 78 rows with duplicates in both: seconds


@pytest.fixture(scope="module")
def srv():
    with mirror.serve(max_seconds=600) as m:
        yield m


@pytest.fixture(scope="module")
def full_data_cfg():
    cfg = profiles.load_profile("full")["data"]
    assert cfg["labels"] == "columns" and cfg["split"]["method"] == "benchmark"  # the full profile's defaults
    return {**cfg, "max_proteins": N_PER_FILE, "subsample_seed": SUBSAMPLE_SEED}


@pytest.fixture(autouse=True)
def fast_polling(monkeypatch):
    monkeypatch.setattr(download, "uniprot_map_ensembl", functools.partial(
        download.uniprot_map_ensembl, poll_interval=0.01, retries=1, backoff=0.001))


def _expected(name_filter=None):
    """The subsample's rows of the real tables, read independently with pandas."""
    out = []
    for name in ("data_train.csv", "data_test.csv"):
        raw = pd.read_csv(VISLOCAS / name, dtype=str)
        ids = pd.Series(raw["Protein Id"].str.replace(r"\.\d+$", "", regex=True).unique())
        keep = set(ids.sample(n=N_PER_FILE, random_state=SUBSAMPLE_SEED))
        raw = raw[raw["Protein Id"].isin(keep)].copy()
        raw["key"] = raw["Antibody Id"].str.extract(r"[A-Za-z]+0*(\d+)", expand=False) + "/" + \
            raw["URL"].str.split("/").str[-1]
        raw["file"] = name
        out.append(raw)
    return pd.concat(out, ignore_index=True)


# ----------------------------------------------------------------------------- the server

def test_mirror_serves_the_real_protocols(srv):
    base = srv.url
    # Zenodo: the real tables, byte for byte (pinned MD5s)
    for name in ("data_train.csv", "data_test.csv"):
        body = requests.get(f"{base}/api/records/10632698/files/{name}/content", timeout=30).content
        assert body == (VISLOCAS / name).read_bytes()
        assert "md5:" + hashlib.md5(body).hexdigest() == download.ZENODO_FILES[name]
    assert requests.get(f"{base}/api/records/10632698/files/normalLabeled.csv/content", timeout=30).status_code == 404

    # an image of the table: a valid, small, seeded JPEG marked synthetic; drawn from its row's labels
    url = hpa.image_url("HPA005560", "15519_B_9_7.jpg", host=base)  # SKAP2, data_test.csv row 0
    r1, r2 = requests.get(url, timeout=30), requests.get(url, timeout=30)
    assert r1.status_code == 200 and r1.content == r2.content
    assert r1.headers["X-Proloc-Synthetic"] == "stand-in image"
    im = Image.open(io.BytesIO(r1.content))
    assert im.format == "JPEG" and im.size == (mirror.IMAGE_SIZE, mirror.IMAGE_SIZE)
    assert b"SYNTHETIC" in im.info.get("comment", b"")
    head = requests.head(url, timeout=30)
    assert int(head.headers["Content-Length"]) == len(r1.content)
    assert requests.get(hpa.image_url("HPA005560", "99999_X_1_1.jpg", host=base), timeout=30).status_code == 404

    # UniProt ID mapping: run -> RUNNING -> 303 to results -> paged TSV with Link headers
    real, other = "ENSG00000005020", "ENSG00000003756"  # a test protein (real sequence), a train one
    job = requests.post(f"{base}/idmapping/run", data={"from": "Ensembl", "to": "UniProtKB-Swiss-Prot",
                                                       "ids": f"{real},{other},ENSG00000999999"},
                        timeout=30).json()["jobId"]
    assert requests.get(f"{base}/idmapping/status/{job}", timeout=30).json() == {"jobStatus": "RUNNING"}
    done = requests.get(f"{base}/idmapping/status/{job}", allow_redirects=False, timeout=30)
    assert done.status_code == 303 and done.headers["Location"].endswith(f"/idmapping/uniprotkb/results/{job}")
    page1 = requests.get(f"{base}/idmapping/uniprotkb/results/{job}", params={"format": "tsv", "size": 2}, timeout=30)
    assert 'rel="next"' in page1.headers["Link"]
    rows = [ln.split("\t") for ln in page1.text.splitlines()]
    assert rows[0] == ["From", "Entry", "Reviewed", "Sequence"]
    got = {r[0]: r for r in rows[1:]}
    ref = pd.read_csv(REFERENCE / "proloc_ihs_test.csv")
    assert got[real][3] == ref.loc[ref["File Name"].str.startswith(real + "-"), "Sequence"].iloc[0]
    assert got[other][1].startswith(mirror.STANDIN_PREFIX) and got[other][3] == mirror.standin_sequence(other)
    nxt = requests.get(page1.headers["Link"].split(">")[0][1:], timeout=30)
    assert nxt.text.splitlines() == ["From\tEntry\tReviewed\tSequence"]  # an id it does not know: no entry
    assert "Link" not in nxt.headers

    man = requests.get(f"{base}/proloc-mirror.json", timeout=30).json()
    assert man["synthetic_images"] and man["standin_sequences"]
    assert len(man["real_sequence_genes"]) == 54 and man["n_images"] == 5169 + 566


# ----------------------------------------------------------------------------- full profile, normal mode

def test_full_profile_build_through_the_mirror(srv, label_map, full_data_cfg, tmp_path):
    exp = _expected()
    assert exp["key"].duplicated().sum() > 0  # the subsample holds duplicate rows, as the tables do
    proteins, images, report = build.assemble(full_data_cfg, label_map, tmp_path, progress=False, mirror=srv.url)

    # every unique image of the (subsampled) tables, each once, under its own checksum
    unique = exp.drop_duplicates("key")
    labelled = unique[unique[LABELS].astype(float).sum(axis=1) > 0]
    has_label = exp.groupby("Protein Id")[LABELS].apply(lambda g: g.astype(float).to_numpy().max() > 0)
    want = set(unique.loc[unique["Protein Id"].map(has_label), "key"])
    assert set(images["image_key"]) == want and images["image_id"].is_unique
    assert len(labelled) <= len(images)
    dup = report["duplicate_image_rows"]
    assert dup["rows"] == len(exp) and dup["unique_images"] == exp["key"].nunique()
    assert dup["duplicate_rows"] == exp["key"].duplicated().sum()
    n_rows = exp.groupby("key").size()
    assert images.set_index("image_key")["n_rows"].to_dict() == n_rows[list(images["image_key"])].to_dict()
    for _, row in images.iterrows():
        assert row["image_id"] == file_sha256(tmp_path / row["path"])
        assert load_image(tmp_path / row["path"]).size == (mirror.IMAGE_SIZE,) * 2

    # labels: the tables' own columns (image: its row's; protein: the union over its images)
    by_key = exp.drop_duplicates("key").set_index("key")
    np.testing.assert_array_equal(images[LABELS].to_numpy(dtype=int),
                                  by_key.loc[images["image_key"], LABELS].astype(float).to_numpy(dtype=int))
    union = exp.groupby("Protein Id")[LABELS].apply(lambda g: g.astype(float).max()).astype(int)
    np.testing.assert_array_equal(proteins[LABELS].to_numpy(), union.loc[proteins["protein_id"]].to_numpy())
    assert report["label_source"]["source"] == "columns"
    assert "rows" in report["label_source"]["mapping_vs_columns"]

    # sequences: the real ones for the paper's test proteins, marked stand-ins for the rest
    test_ids = set(exp.loc[exp["file"] == "data_test.csv", "Protein Id"])
    assert (set(proteins.loc[proteins["sequence_source"] == "uniprot", "protein_id"])
            == test_ids & set(proteins["protein_id"]))
    standin = proteins[proteins["sequence_source"] == "standin"]
    assert len(standin) and all(s == mirror.standin_sequence(p)
                                for p, s in zip(standin["protein_id"], standin["sequence"]))
    prov = report["provenance"]
    assert prov["synthetic_images"] and prov["standin_sequences"] and prov["mirror"] == srv.url
    assert prov["n_standin_sequences"] == len(standin) and prov["n_synthetic_images"] == len(images)
    full_prov = build.build_provenance(profiles.load_profile("full")["provenance"], report)
    assert full_prov["synthetic_images"] and not full_prov["real_sequences"]
    assert "SYNTHETIC" in provenance.provenance_line(full_prov) and "STAND-IN" in provenance.provenance_line(full_prov)

    # the benchmark protocol: Vislocas test = the test split, val carved from train, disjoint
    split, srep = splits.split_proteins(proteins, images, LABELS, full_data_cfg["split"], seed=0)
    assert set(proteins.loc[split == "test", "protein_id"]) == test_ids & set(proteins["protein_id"])
    assert set(split) == {"train", "val", "test"}  # val carved from train: at least one protein
    proteins = proteins.assign(split=split)
    images = images.merge(proteins[["protein_id", "split"]], on="protein_id")
    # the stage's files: parquet tables (round trip), report.json, data card
    proteins.to_parquet(tmp_path / "proteins.parquet", index=False)
    images.to_parquet(tmp_path / "images.parquet", index=False)
    back = pd.read_parquet(tmp_path / "images.parquet")
    assert back["image_id"].tolist() == images["image_id"].tolist() and (back["synthetic_image"]).all()
    assert set(pd.read_parquet(tmp_path / "proteins.parquet")["split"]) == {"train", "val", "test"}
    json.loads(json.dumps({**report, "split": srep}, default=str))
    card = datacard.data_card(proteins, images, LABELS, report, "note", split_report=srep)
    for text in ("offline mirror", "SYNTHETIC stand-in images", "STAND-IN sequences", "label source: **columns**",
                 "duplicate rows:", "split protocol: **benchmark**", "## Images per label and split",
                 "## Images per protein", "## Label co-occurrence"):
        assert text in card, text

    # a rerun fetches nothing again (every image cached)
    before = srv.requests.get("images", 0)
    _, images2, _ = build.assemble(full_data_cfg, label_map, tmp_path, progress=False, mirror=srv.url)
    assert (images2["fetch_status"] == "cached").all()
    assert srv.requests["images"] - before <= 32  # only the size estimate's HEAD sample, if any
    assert images2["image_id"].tolist() == images["image_id"].tolist()


# ----------------------------------------------------------------------------- streaming, interrupted

def test_streaming_build_embeds_each_image_once_and_resumes(srv, label_map, full_data_cfg, tmp_path):
    calls: list[dict] = []

    class Interrupt(KeyboardInterrupt):
        pass

    def embed(paths, fail_on=None):
        if fail_on is not None and len(calls) == fail_on:
            raise Interrupt("killed mid-run")
        for key, path in paths.items():
            assert file_sha256(path) == key  # the full file, still there
        calls.append(dict(paths))
        return {"failures": []}

    cfg = {**full_data_cfg, "stream": True}
    with pytest.raises(Interrupt):
        build.assemble(cfg, label_map, tmp_path, progress=False, mirror=srv.url,
                     embed=functools.partial(embed, fail_on=1))
    assert len(calls) == 1
    first = set(calls[0])
    ledger = json.loads((tmp_path / "images" / download.STREAM_LEDGER).read_text())
    assert {v["sha256"] for v in ledger.values()} == first

    proteins, images, report = build.assemble(cfg, label_map, tmp_path, progress=False, mirror=srv.url, embed=embed)
    embedded = [k for c in calls for k in c]
    assert len(embedded) == len(set(embedded))  # nothing embedded twice, across the interruption
    assert set(embedded) == set(images["image_id"]) and report["image_failures"] == []
    exp = _expected()
    assert report["duplicate_image_rows"]["duplicate_rows"] == exp["key"].duplicated().sum() > 0
    assert images["image_id"].is_unique
    assert all(p.startswith("images/thumbnails/") for p in images["path"])
    assert not [p for p in (tmp_path / "images").rglob("*.jpg") if "thumbnails" not in p.parts]


def test_later_stages_read_the_build_provenance(tmp_path):
    """A mirror build's manifest says synthetic images + stand-ins; data.provenance_note repeats it."""
    from proloc_lib.data import build
    from proloc_lib.profiles import loader as profiles

    cfg = profiles.load_profile("full")
    assert common.stage_note(cfg, tmp_path) == "Real data and pretrained encoders."  # nothing built yet
    report = {"provenance": {"mirror": "http://127.0.0.1:1", "synthetic_images": True,
                             "n_standin_sequences": 490}}
    prov = build.build_provenance(cfg["provenance"], report)
    out = paths.stage_dir("full", "01_data_assembly", tmp_path)
    with manifest.stage_output(out, "01_data_assembly", {}, provenance=prov):
        pass
    note = common.stage_note(cfg, tmp_path)
    assert "SYNTHETIC" in note and "490 seeded STAND-IN sequences" in note and "Not comparable" in note


# -- bad requests and load: 400s, no self-links, expiring jobs, bounded handlers -------------------
PLANTED = Path(__file__).resolve().parents[1] / "fixtures" / "hpa" / "audit_planted.csv"
RUN = {"from": "Ensembl", "to": "UniProtKB-Swiss-Prot"}


@pytest.fixture
def tables(tmp_path):
    """A tiny Vislocas layout (the planted fixture as both tables): the mirror starts in a moment."""
    d = tmp_path / "vislocas"
    d.mkdir()
    for name in mirror.TABLES:
        shutil.copy(PLANTED, d / name)
    return d


def _job(m, ids) -> str:
    r = requests.post(f"{m.url}/idmapping/run", data={**RUN, "ids": ",".join(ids)}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["jobId"]


def _genes(m) -> list[str]:
    return list(m.data.genes)


@pytest.mark.parametrize("query, reason", [
    ("size=abc", "size must be an integer from 1 to 500, got 'abc'"),
    ("size=0", "size must be an integer from 1 to 500, got '0'"),
    ("size=-3", "size must be an integer from 1 to 500"),
    ("cursor=x", "cursor must be an integer from 0 to"),
    ("cursor=-1", "cursor must be an integer from 0 to"),
])
def test_bad_page_parameters_get_400_with_one_line(tables, capfd, query, reason):
    with mirror.serve(tables, tables / "none.csv", max_seconds=60) as m:
        job = _job(m, _genes(m))
        r = requests.get(f"{m.url}/idmapping/uniprotkb/results/{job}?{query}", timeout=10)
        assert r.status_code == 400 and r.json() == {"messages": [r.json()["messages"][0]]}
        assert reason in r.json()["messages"][0]
        assert requests.get(f"{m.url}/idmapping/uniprotkb/results/{job}", timeout=10).status_code == 200
    assert "Traceback" not in capfd.readouterr().err


def test_pages_link_forward_and_never_to_themselves(tables):
    with mirror.serve(tables, tables / "none.csv", max_seconds=60) as m:
        genes = _genes(m)
        url, seen, pages = f"{m.url}/idmapping/uniprotkb/results/{_job(m, genes)}?size=2", [], 0
        while url:
            r = requests.get(url, timeout=10)
            assert r.status_code == 200
            seen += [line.split("\t")[0] for line in r.text.splitlines()[1:]]
            nxt = r.links.get("next", {}).get("url")
            assert nxt != url
            url, pages = nxt, pages + 1
        assert seen == genes and pages == -(-len(genes) // 2)


@pytest.mark.parametrize("length", ["abc", "-5", str(mirror.MAX_BODY + 1)])
def test_a_bad_content_length_gets_400(tables, capfd, length):
    with mirror.serve(tables, tables / "none.csv", max_seconds=60) as m:
        conn = http.client.HTTPConnection("127.0.0.1", int(m.url.rsplit(":", 1)[1]), timeout=10)
        conn.putrequest("POST", "/idmapping/run")
        conn.putheader("Content-Length", length)
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read().decode()
        conn.close()
        assert resp.status == 400 and "Content-Length must be an integer from 0 to" in body
        assert _job(m, _genes(m)[:1])       # the mirror still serves
    assert "Traceback" not in capfd.readouterr().err


def test_id_mapping_jobs_expire(tables):
    with mirror.serve(tables, tables / "none.csv", max_seconds=60, job_ttl_s=0.0) as m:
        first = _job(m, _genes(m)[:1])
        second = _job(m, _genes(m)[:2])
        assert first != second and m.jobs_held == 1
        assert requests.get(f"{m.url}/idmapping/status/{first}", timeout=10).status_code == 404
        assert requests.get(f"{m.url}/idmapping/details/{second}", timeout=10).status_code == 200
    with mirror.serve(tables, tables / "none.csv", max_seconds=60) as m:
        jobs = [_job(m, _genes(m)[:1]) for _ in range(3)]
        assert m.jobs_held == 3 and len(set(jobs)) == 3     # within their time, jobs stay


def test_handlers_are_bounded_and_idle_connections_time_out(tables, monkeypatch):
    monkeypatch.setattr(mirror, "MAX_HANDLERS", 2)
    monkeypatch.setattr(mirror, "SLOT_WAIT_S", 0.2)
    monkeypatch.setattr(mirror._Handler, "timeout", 1.0)
    with mirror.serve(tables, tables / "none.csv", max_seconds=60) as m:
        host, port = "127.0.0.1", int(m.url.rsplit(":", 1)[1])
        idle = [socket.create_connection((host, port)) for _ in range(2)]   # connect, then say nothing
        try:
            time.sleep(0.3)   # let both be accepted (each holds a handler)
            r = requests.get(f"{m.url}/proloc-mirror.json", timeout=10)
            assert r.status_code == 503 and r.headers["Retry-After"] == "1"
            assert m._server.rejected >= 1
            # the idle connections are dropped after the socket timeout; the mirror serves again
            deadline = time.monotonic() + 20
            while requests.get(f"{m.url}/proloc-mirror.json", timeout=10).status_code != 200:
                assert time.monotonic() < deadline, "idle connections were never timed out"
                time.sleep(0.2)
            for s in idle:    # the server closed them: reading gives end of file
                s.settimeout(5)
                assert s.recv(1) == b""
        finally:
            for s in idle:
                s.close()
