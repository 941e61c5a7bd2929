"""Tests for proloc_lib.data.download against recorded responses served from 127.0.0.1.

The `server` fixture (conftest.py: a small threaded HTTP server) plays a script per path (a list
of responses, the last one repeated) and records every request, so retries, Range resumes,
quarantine and UniProt job polling are exercised over real HTTP without the network.
"""
import hashlib
import io
import json
import os
import stat
import time
from urllib.parse import parse_qs

import pandas as pd
import pytest
from PIL import Image

from proloc_lib.data.download import (
    ZENODO_FILES,
    ChecksumError,
    DownloadError,
    UniProtJobError,
    _RateLimiter,
    estimate_download,
    fetch_images,
    fetch_zenodo,
    format_bytes,
    uniprot_map_ensembl,
)
from proloc_lib.data.images import load_image

FAST = dict(rate_limit_per_s=None, retries=3, backoff=0.001, progress=False)


def rows(server, *names):
    return pd.DataFrame({"protein_id": [f"ENSG{i:011d}" for i in range(len(names))],
                         "image_name": list(names),
                         "url": [f"{server.url}/5560/{n}" for n in names]})


# ----------------------------------------------------------------------------- images

def test_retry_after_server_error(server, tmp_path):
    img = server.jpeg_bytes()
    server.routes["/5560/a.jpg"] = [server.send(500, b"oops"), server.send(503), server.serve_file(img)]
    table, failures = fetch_images(rows(server, "a.jpg"), tmp_path, **FAST)
    assert failures == []
    assert len(server.requests_to("/5560/a.jpg")) == 3
    path = tmp_path / "5560" / "a.jpg"
    assert table.loc[0, "path"] == str(path) and path.read_bytes() == img
    assert table.loc[0, "sha256"] == hashlib.sha256(img).hexdigest()
    assert table.loc[0, "fetch_status"] == "downloaded"
    assert list(tmp_path.rglob("*.part")) == []


def test_truncated_transfer_resumes_with_range(server, tmp_path):
    img = server.jpeg_bytes(128)
    half = len(img) // 2
    server.routes["/5560/b.jpg"] = [server.truncated(img, half), server.serve_file(img)]
    table, failures = fetch_images(rows(server, "b.jpg"), tmp_path, **FAST)
    assert failures == []
    first, second = server.requests_to("/5560/b.jpg")
    assert "Range" not in first["headers"]
    assert second["headers"]["Range"] == f"bytes={half}-"  # only the missing part was asked for
    assert (tmp_path / "5560" / "b.jpg").read_bytes() == img
    load_image(table.loc[0, "path"])


def test_interrupted_run_resumes_from_part_file(server, tmp_path):
    img = server.jpeg_bytes(128)
    (tmp_path / "5560").mkdir()
    (tmp_path / "5560" / "c.jpg.part").write_bytes(img[:100])  # left by an earlier run
    server.routes["/5560/c.jpg"] = [server.serve_file(img)]
    table, failures = fetch_images(rows(server, "c.jpg"), tmp_path, **FAST)
    assert failures == [] and server.log[0]["headers"]["Range"] == "bytes=100-"
    assert (tmp_path / "5560" / "c.jpg").read_bytes() == img


def test_html_page_is_quarantined_and_refetched(server, tmp_path):
    img = server.jpeg_bytes()
    server.routes["/5560/d.jpg"] = [server.send(200, server.HTML_PAGE, {"Content-Type": "text/html"}),
                                    server.serve_file(img)]
    table, failures = fetch_images(rows(server, "d.jpg"), tmp_path, **FAST)
    assert failures == []
    assert table.loc[0, "fetch_status"] == "refetched"
    [q] = list((tmp_path / "quarantine").iterdir())
    assert q.read_bytes() == server.HTML_PAGE
    assert (tmp_path / "5560" / "d.jpg").read_bytes() == img


def test_persistent_bad_content_is_reported_not_dropped(server, tmp_path):
    img = server.jpeg_bytes(128)
    server.routes["/5560/e.jpg"] = [server.send(200, server.HTML_PAGE, {"Content-Type": "text/html"})]
    # a truncated JPEG served with a matching Content-Length: only decoding can tell
    server.routes["/5560/f.jpg"] = [server.send(200, img[: len(img) * 2 // 3])]
    server.routes["/5560/g.jpg"] = [server.serve_file(img)]
    table, failures = fetch_images(rows(server, "e.jpg", "f.jpg", "g.jpg"), tmp_path, **FAST)
    assert table["image_name"].tolist() == ["g.jpg"]
    assert [u for u, _ in failures] == [f"{server.url}/5560/e.jpg", f"{server.url}/5560/f.jpg"]
    assert all("not a valid image" in reason for _, reason in failures)
    assert len(server.requests_to("/5560/e.jpg")) == 2  # fetched again exactly once
    assert len(list((tmp_path / "quarantine").iterdir())) == 4
    assert not (tmp_path / "5560" / "e.jpg").exists() and not (tmp_path / "5560" / "f.jpg").exists()


def test_not_found_is_a_failure_without_retries(server, tmp_path):
    table, failures = fetch_images(rows(server, "missing.jpg"), tmp_path, **FAST)
    assert len(table) == 0
    [(url, reason)] = failures
    assert url.endswith("/5560/missing.jpg") and "HTTP 404" in reason
    assert len(server.log) == 1


def test_retries_exhausted_is_reported(server, tmp_path):
    server.routes["/5560/h.jpg"] = [server.send(502)]
    table, failures = fetch_images(rows(server, "h.jpg"), tmp_path, **{**FAST, "retries": 2})
    assert len(server.log) == 3 and len(table) == 0
    assert "HTTP 502 after 3 attempts" in failures[0][1]


def test_rerun_reuses_cache_and_never_overwrites(server, tmp_path):
    img = server.jpeg_bytes()
    server.routes["/5560/i.jpg"] = [server.serve_file(img)]
    fetch_images(rows(server, "i.jpg"), tmp_path, **FAST)
    path = tmp_path / "5560" / "i.jpg"
    mtime = path.stat().st_mtime_ns
    server.routes["/5560/i.jpg"] = [server.serve_file(server.jpeg_bytes(color=(0, 0, 255)))]
    n_before = len(server.log)
    table, failures = fetch_images(rows(server, "i.jpg"), tmp_path, **FAST)
    assert failures == [] and table.loc[0, "fetch_status"] == "cached"
    assert len(server.log) == n_before  # no request at all
    assert path.read_bytes() == img and path.stat().st_mtime_ns == mtime


def test_corrupt_cached_file_is_quarantined(server, tmp_path):
    img = server.jpeg_bytes()
    (tmp_path / "5560").mkdir()
    (tmp_path / "5560" / "j.jpg").write_bytes(server.HTML_PAGE)
    server.routes["/5560/j.jpg"] = [server.serve_file(img)]
    table, failures = fetch_images(rows(server, "j.jpg"), tmp_path, **FAST)
    assert failures == [] and table.loc[0, "fetch_status"] == "refetched"
    assert (tmp_path / "5560" / "j.jpg").read_bytes() == img
    assert [p.read_bytes() for p in (tmp_path / "quarantine").iterdir()] == [server.HTML_PAGE]


def test_base_url_override(server, tmp_path):
    server.routes["/5560/k.jpg"] = [server.serve_file(server.jpeg_bytes())]
    src = pd.DataFrame({"url": ["http://images.proteinatlas.org/5560/k.jpg"]})
    table, failures = fetch_images(src, tmp_path, base_url=server.url, **FAST)
    assert failures == [] and len(server.requests_to("/5560/k.jpg")) == 1
    with pytest.raises(KeyError, match="'url'"):
        fetch_images(pd.DataFrame({"x": [1]}), tmp_path, **FAST)


def test_rate_limiter_spaces_requests():
    limiter = _RateLimiter(50)
    t0 = time.monotonic()
    for _ in range(4):
        limiter.wait()
    assert time.monotonic() - t0 >= 0.055  # 3 intervals of 20 ms


# ----------------------------------------------------------------------------- Zenodo

ZPATH = "/api/records/10632698/files"


def test_zenodo_download_checked_and_cached(server, tmp_path):
    body = b"Protein Id,Antibody Id,locations\nENSG00000000001,HPA000001,nucleoplasm\n"
    server.routes[f"{ZPATH}/data_test.csv/content"] = [server.send(200, body)]
    md5 = "md5:" + hashlib.md5(body).hexdigest()
    path = fetch_zenodo("data_test.csv", tmp_path, base_url=server.url + ZPATH, known_hash=md5, progress=False)
    assert path == tmp_path / "data_test.csv" and path.read_bytes() == body
    fetch_zenodo("data_test.csv", tmp_path, base_url=server.url + ZPATH, known_hash=md5, progress=False)
    assert len(server.log) == 1  # second call served from the cache


def test_zenodo_checksum_mismatch_leaves_nothing(server, tmp_path):
    body = b"not the published file\n"
    server.routes[f"{ZPATH}/data_test.csv/content"] = [server.send(200, body)]
    (tmp_path / "data_test.csv").write_bytes(b"stale corrupt copy")  # from an earlier bad run
    with pytest.raises(ChecksumError) as err:
        fetch_zenodo("data_test.csv", tmp_path, base_url=server.url + ZPATH, progress=False)
    msg = str(err.value)
    assert "data_test.csv" in msg
    assert ZENODO_FILES["data_test.csv"] in msg and hashlib.md5(body).hexdigest() in msg
    assert list(tmp_path.iterdir()) == []


def test_zenodo_unknown_name_and_http_error(server, tmp_path):
    with pytest.raises(KeyError, match="unknown Zenodo file"):
        fetch_zenodo("other.csv", tmp_path, base_url=server.url + ZPATH)
    with pytest.raises(DownloadError, match="normalLabeled.csv"):
        fetch_zenodo("normalLabeled.csv", tmp_path, base_url=server.url + ZPATH, progress=False)


# ----------------------------------------------------------------------------- UniProt

def tsv(*rows):
    lines = ["From\tEntry\tReviewed\tSequence"] + ["\t".join(r) for r in rows]
    return ("\n".join(lines) + "\n").encode()


UP = dict(poll_interval=0.01, timeout_s=5, retries=1, backoff=0.001)


def test_uniprot_job_polled_and_paged(server):
    server.routes["/idmapping/run"] = [server.send_json({"jobId": "job1"})]
    server.routes["/idmapping/status/job1"] = [
        server.send_json({"jobStatus": "RUNNING"}), server.send_json({"jobStatus": "RUNNING"}),
        server.send(303, b'{"jobStatus":"FINISHED"}', {"Location": "/idmapping/uniprotkb/results/job1"})]
    next_url = f"{server.url}/idmapping/uniprotkb/results/job1?cursor=page2&format=tsv&size=500"
    server.routes["/idmapping/uniprotkb/results/job1"] = [
        server.send(200, tsv(("ENSG00000000001", "P11111", "reviewed", "MKTAYIAKQR"),
                      ("ENSG00000000002", "A0A000", "unreviewed", "MSDNELLKQL"),
                      ("ENSG00000000004", "P44444", "reviewed", "MAAPLLRGWA")),
             {"Link": f'<{next_url}>; rel="next"'}),
        server.send(200, tsv(("ENSG00000000004", "Q44444", "reviewed", "MGSSHHHHHH"),
                      ("ENSG00000000005", "P55555-2", "reviewed", "MKTAYIAKQR"),
                      ("ENSG00000000006", "P66666", "reviewed", "MGSSHHHHHHSSG")))]
    genes = ["ENSG00000000001", "ENSG00000000002", "ENSG00000000003", "ENSG00000000004",
             "ENSG00000000005", "ENSG00000000006.3", "ENSG00000000001"]
    table, dropped = uniprot_map_ensembl(genes, base_url=server.url, **UP)

    [run] = server.requests_to("/idmapping/run")
    form = parse_qs(run["body"].decode())
    assert form["from"] == ["Ensembl"] and form["to"] == ["UniProtKB-Swiss-Prot"]
    assert form["ids"][0].split(",") == genes[:5] + ["ENSG00000000006"]  # deduplicated, version dropped
    assert len(server.requests_to("/idmapping/status/job1")) == 3
    pages = server.requests_to("/idmapping/uniprotkb/results/job1")
    assert len(pages) == 2 and "cursor=page2" in pages[1]["url"]
    assert "fields=accession%2Creviewed%2Csequence" in pages[0]["url"]

    assert table.to_dict("records") == [
        {"ensembl": "ENSG00000000001", "accession": "P11111", "sequence": "MKTAYIAKQR"},
        {"ensembl": "ENSG00000000006", "accession": "P66666", "sequence": "MGSSHHHHHHSSG"}]
    assert set(dropped) == {"ENSG00000000002", "ENSG00000000003", "ENSG00000000004", "ENSG00000000005"}
    assert "no reviewed" in dropped["ENSG00000000002"] and "no reviewed" in dropped["ENSG00000000005"]
    assert dropped["ENSG00000000004"] == "ambiguous: several Swiss-Prot entries P44444, Q44444"


def test_uniprot_batches_and_finished_status_without_redirect(server):
    server.routes["/idmapping/run"] = [server.send_json({"jobId": "jobA"}), server.send_json({"jobId": "jobB"})]
    for job, gene, acc in (("jobA", "ENSG00000000001", "P11111"), ("jobB", "ENSG00000000003", "P33333")):
        server.routes[f"/idmapping/status/{job}"] = [server.send_json({"jobStatus": "FINISHED"})]
        server.routes[f"/idmapping/details/{job}"] = [
            server.send_json({"redirectURL": f"{server.url}/idmapping/uniprotkb/results/{job}"})]
        server.routes[f"/idmapping/uniprotkb/results/{job}"] = [
            server.send(200, tsv((gene, acc, "reviewed", "MKTAYIAKQR")))]
    table, dropped = uniprot_map_ensembl(["ENSG00000000001", "ENSG00000000002", "ENSG00000000003"],
                                         base_url=server.url, batch_size=2, **UP)
    runs = server.requests_to("/idmapping/run")
    assert [parse_qs(r["body"].decode())["ids"][0] for r in runs] == [
        "ENSG00000000001,ENSG00000000002", "ENSG00000000003"]
    assert table["accession"].tolist() == ["P11111", "P33333"] and list(dropped) == ["ENSG00000000002"]


def test_uniprot_failed_job_raises_with_job_id(server):
    server.routes["/idmapping/run"] = [server.send_json({"jobId": "jobX"})]
    server.routes["/idmapping/status/jobX"] = [server.send_json({"jobStatus": "RUNNING"}),
                                               server.send_json({"jobStatus": "ERROR", "errors": ["bad ids"]})]
    expected = r"jobX \(batch 1/1, ids ENSG00000000001\.\.ENSG00000000002\) ended as ERROR"
    with pytest.raises(UniProtJobError, match=expected):
        uniprot_map_ensembl(["ENSG00000000001", "ENSG00000000002"], base_url=server.url, **UP)


def test_uniprot_job_running_past_timeout(server):
    server.routes["/idmapping/run"] = [server.send_json({"jobId": "jobSlow"})]
    server.routes["/idmapping/status/jobSlow"] = [server.send_json({"jobStatus": "RUNNING"})]
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="jobSlow"):
        uniprot_map_ensembl(["ENSG00000000001"], base_url=server.url, **{**UP, "timeout_s": 0.2})
    assert time.monotonic() - t0 < 3
    assert len(server.requests_to("/idmapping/status/jobSlow")) >= 2


# ----------------------------------------------------------------------------- streaming

def test_streaming_embeds_keeps_thumbnails_deletes_images_and_resumes(server, tmp_path):
    from proloc_lib.data.download import stream_images

    names = [f"s{i}.jpg" for i in range(5)]
    for i, n in enumerate(names):
        server.routes[f"/5560/{n}"] = [server.serve_file(server.jpeg_bytes(300, (40 * i, 90, 40)))]
    server.routes["/5560/bad.jpg"] = [server.send(200, server.HTML_PAGE)]
    embedded = {}

    def embed(paths):
        for key, path in paths.items():
            assert load_image(path).size == (300, 300)      # the full image, before deletion
            embedded[key] = path
        return {"failures": []}

    table, failures = stream_images(rows(server, *names, "bad.jpg"), tmp_path, embed, chunk_size=2, **FAST)
    assert len(table) == 5 and len(embedded) == 5 and set(table["sha256"]) == set(embedded)
    assert [u for u, _ in failures] == [f"{server.url}/5560/bad.jpg"]
    assert not list(tmp_path.glob("5560/*.jpg"))                         # full images deleted
    assert all(load_image(p).size == (256, 256) for p in table["path"])   # thumbnails kept
    n_requests = len(server.log)
    again, _ = stream_images(rows(server, *names), tmp_path, embed, chunk_size=2, **FAST)
    assert len(server.log) == n_requests and len(embedded) == 5          # nothing fetched or embedded again
    assert again["sha256"].tolist() == table["sha256"].tolist()


def test_download_estimate_skips_cached_files_and_sizeless_answers(server, tmp_path):
    urls = [f"{server.url}/img/{i}.jpg" for i in range(4)]
    cache = tmp_path / "cache"
    (cache / "img").mkdir(parents=True)
    (cache / "img" / "0.jpg").write_bytes(b"cached")
    # this server answers no HEAD (501): no size is known, and none is guessed
    est = estimate_download(urls + urls[:1], cache, rate_limit_per_s=None, retries=0)
    assert (est["n_urls"], est["n_cached"], est["n_to_fetch"], est["sampled"]) == (4, 1, 3, 3)
    assert est["sampled_with_size"] == 0 and est["estimated_bytes"] is None and est["mean_bytes"] is None
    assert server.log == []  # nothing downloaded (HEADs are answered 501 before the log)
    assert estimate_download(urls[:1], cache)["estimated_bytes"] == 0  # all cached
    (cache / "streamed.json").write_text(json.dumps({urls[1]: {"sha256": "x", "thumbnail": None}}))
    assert estimate_download(urls[:2], cache)["n_cached"] == 2  # streamed (embedded, deleted) counts as done
    assert format_bytes(2.5e9) == "2.5 GB" and format_bytes(None) == "unknown"


def test_streaming_fetches_a_repeated_image_once(server, tmp_path):
    """Rows repeating an image (Vislocas: the same antibody/image under two tissues), even in one
    chunk: fetched and embedded once, every row answered (it used to fail 'image not found')."""
    from proloc_lib.data.download import stream_images

    for i in range(3):
        # one answer each
        server.routes[f"/5560/d{i}.jpg"] = [server.serve_file(server.jpeg_bytes(300, (60 * i, 90, 40)))]
    calls = []

    def embed(paths):
        calls.append(sorted(paths))
        return {"failures": []}

    table, failures = stream_images(rows(server, "d0.jpg", "d1.jpg", "d0.jpg", "d2.jpg", "d0.jpg"), tmp_path,
                                    embed, chunk_size=4, **FAST)
    assert failures == [] and len(table) == 5
    assert sum(len(c) for c in calls) == 3 and len({k for c in calls for k in c}) == 3
    assert table["sha256"].iloc[0] == table["sha256"].iloc[2] == table["sha256"].iloc[4]
    assert len([r for r in server.log if r["path"] == "/5560/d0.jpg"]) == 1


# -- file modes of the download caches -------------------------------------------------------------
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_cached_downloads_follow_the_umask(server, tmp_path, umask, mode):
    body = b"Protein Id,Antibody Id,locations\nENSG00000000001,HPA000001,nucleoplasm\n"
    server.routes[f"{ZPATH}/data_test.csv/content"] = [server.send(200, body)]
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (180, 90, 40)).save(buf, format="JPEG")
    server.routes["/5560/a.jpg"] = [server.send(200, buf.getvalue(), {"Content-Type": "image/jpeg"})]
    old = os.umask(umask)
    try:
        table = fetch_zenodo("data_test.csv", tmp_path / "z", base_url=server.url + ZPATH,
                             known_hash="md5:" + hashlib.md5(body).hexdigest(), progress=False)
        ok, failures = fetch_images(pd.DataFrame({"url": [f"{server.url}/5560/a.jpg"]}), tmp_path / "img",
                                    rate_limit_per_s=None, progress=False)
    finally:
        os.umask(old)
    assert failures == []
    for path in (table, tmp_path / "img" / "5560" / "a.jpg"):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
