"""End-to-end test of ``build.assemble`` (the full profile's data build), offline.

Zenodo, the UniProt ID-mapping service and the HPA image host are played by one local
127.0.0.1 server (the `server` fixture, conftest.py) serving recorded-style responses: two small
Vislocas-like CSVs in the HPA metadata layout, a paged UniProt TSV, and JPEGs (one image
URL answers an HTML error page with 200). The module constants are pointed at that server.
"""
import functools
import hashlib
import socket
import time
from pathlib import Path
from urllib.parse import parse_qs

import pandas as pd
import pytest

from proloc_lib.core.fileio import file_sha256
from proloc_lib.core.network import OfflineError  # noqa: E402
from proloc_lib.data import build, datacard, download, hpa
from proloc_lib.data.images import load_image  # noqa: E402
from proloc_lib.data.labels import UnknownLocationError  # noqa: E402

ZPATH = "/api/records/10632698/files"
# These fixtures test the location-mapping label source (data.labels: mapping); the tables'
# own label columns (the default) are tested on the real Vislocas tables in test_mirror.py.
DATA_CFG = {"source": "hpa", "stream": False, "labels": "mapping",
            "filters": {"if_verification": "enhanced", "intensity": "strong", "quantity": ">75%"}}

P1, P2, P3, P4, P5, P6 = (f"ENSG00000{100000 + i}" for i in range(1, 7))

# data_train.csv: the authors' URL-file layout (Image Name and an HPA path in URL), with a
# stale Sequence column that UniProt must override. data_test.csv: the Vislocas layout as
# its prepareData/IHC code writes it (pandas index column, URL = local HPA path, IF Organ and
# ten 0/1 location columns, no Image Name, no Sequence), one Ensembl id with a version suffix.
TRAIN_CSV = f"""\
Protein Name,Protein Id,Antibody Id,Reliability Verification,Tissue,Organ,Staining Level,Intensity Level,Quantity,URL,IF Verification,locations,Sequence,Image Name
ALPHA1,{P1},HPA000123,enhanced,Caudate,Brain,high,strong,>75%,{P1}/Brain/Caudate/HPA000123/101_A_1_1.jpg,enhanced,nucleoplasm;cytosol,MSTALESEQ,101_A_1_1.jpg
ALPHA1,{P1},HPA000123,enhanced,Caudate,Brain,medium,moderate;weak,>75%,{P1}/Brain/Caudate/HPA000123/101_A_2_1.jpg,enhanced,nucleoplasm;cytosol,MSTALESEQ,101_A_2_1.jpg
ALPHA1,{P1},HPA000123,enhanced,Liver,Liver,high;low,strong,<25%;>75%,{P1}/Liver/Liver/HPA000123/101_B_1_1.jpg,enhanced,nucleoplasm;cytosol,MSTALESEQ,101_B_1_1.jpg
BETA2,{P2},CAB004567,supported,Kidney,Kidney,high,strong,>75%,{P2}/Kidney/Kidney/CAB004567/202_A_1_1.jpg,enhanced,Plasma membrane;Golgi apparatus,,202_A_1_1.jpg
BETA2,{P2},CAB004567,supported,Kidney,Kidney,high,strong,75%-25%,{P2}/Kidney/Kidney/CAB004567/202_A_2_1.jpg,enhanced,Plasma membrane;Golgi apparatus,,202_A_2_1.jpg
BETA2,{P2},CAB004567,supported,Colon,Colon,high,strong;moderate,>75%,{P2}/Colon/Colon/CAB004567/202_B_1_1.jpg,enhanced,Plasma membrane;Golgi apparatus,,202_B_1_1.jpg
GAMMA3,{P3},HPA010000,enhanced,Heart muscle,Heart,high,strong,>75%,{P3}/Heart/Heart muscle/HPA010000/303_A_1_1.jpg,enhanced,mitochondria,,303_A_1_1.jpg
DELTA4,{P4},HPA000045,enhanced,Lung,Lung,high,strong,>75%,{P4}/Lung/Lung/HPA000045/404_A_1_1.jpg,supported,endoplasmic reticulum;nucleoli,,404_A_1_1.jpg
EPS5,{P5},HPA000555,uncertain,Skin,Skin,high,strong,>75%,{P5}/Skin/Skin/HPA000555/505_A_1_1.jpg,uncertain,cytosol,,505_A_1_1.jpg
"""  # noqa: E501
TEST_CSV = f"""\
,Protein Name,Protein Id,Antibody Id,Reliability Verification,Tissue,Organ,Staining Level,Intensity Level,Quantity,SnomedParameters,URL,IF Verification,locations,IF Organ,cytoplasm,cytoskeleton,endoplasmic reticulum,golgi apparatus,lysosomes,mitochondria,nucleoli,nucleus,plasma membrane,vesicles
11,ALPHA1,{P1},HPA000123,enhanced,Cerebellum,Brain,high,strong,>75%,"Normal tissue, NOS;Cerebellum",{P1}/Brain/Cerebellum/HPA000123/101_C_1_1.jpg,enhanced,nucleoplasm;vesicles,Brain,0,0,1,0,0,0,0,1,0,0
12,GAMMA3,{P3},HPA010000,enhanced,Skeletal muscle,Muscle,high,strong,>75%,"Normal tissue, NOS",{P3}/Muscle/Skeletal muscle/HPA010000/303_B_1_1.jpg,enhanced,mitochondria,Muscle,0,0,0,0,0,1,0,0,0,0
15,DELTA4,{P4}.12,HPA000045,enhanced,Lung,Lung,high,strong;weak,>75%,"Normal tissue, NOS",{P4}.12/Lung/Lung/HPA000045/404_B_1_1.jpg,enhanced,endoplasmic reticulum;nucleoli,Lung,0,0,1,0,0,0,0,1,0,0
18,ZETA6,{P6},HPA000666,enhanced,Testis,Testis,high,strong,>75%,"Normal tissue, NOS",{P6}/Testis/Testis/HPA000666/606_A_1_1.jpg,enhanced,nucleoli,Testis,0,0,0,0,0,0,0,1,0,0
21,EPS5,{P5},HPA000555,enhanced,Skin,Skin,not detected,,,"Normal tissue, NOS",{P5}/Skin/Skin/HPA000555/505_B_1_1.jpg,enhanced,cytosol,Skin,1,0,0,0,0,0,0,0,0,0
"""  # noqa: E501
ZENODO = {"data_train.csv": TRAIN_CSV.encode(), "data_test.csv": TEST_CSV.encode()}

# Images that pass the filters, by server path; 202_B_1_1 (P2) answers an HTML page.
PASSING = {"/123/101_A_1_1.jpg": P1, "/123/101_B_1_1.jpg": P1, "/123/101_C_1_1.jpg": P1,
           "/4567/202_A_1_1.jpg": P2, "/10000/303_A_1_1.jpg": P3, "/10000/303_B_1_1.jpg": P3,
           "/45/404_B_1_1.jpg": P4, "/666/606_A_1_1.jpg": P6}
HTML_PATH = "/4567/202_B_1_1.jpg"
FILTERED_OUT = ["/123/101_A_2_1.jpg", "/4567/202_A_2_1.jpg", "/45/404_A_1_1.jpg",
                "/555/505_A_1_1.jpg", "/555/505_B_1_1.jpg"]
# Final images: mapped proteins (P3 has no reviewed entry), downloaded, with a target label (not P6).
FINAL = {p: pid for p, pid in PASSING.items() if pid in (P1, P2, P4)}

SEQ = {P1: "MKTAYIAKQRQISFVKSHFSRQ", P2: "MSDNELLKQLEEKLNRLSAE", P4: "MAAPLLRGWAEELKKQ",
       P6: "MGSSHHHHHHSSGLVPRGSH"}
ACC = {P1: "P10001", P2: "P20002", P4: "Q40004", P6: "O60006"}


def _tsv(*rows):
    return ("\n".join(["From\tEntry\tReviewed\tSequence"] + ["\t".join(r) for r in rows]) + "\n").encode()


def _add_head(srv):
    """HEAD, which the recording server does not answer (501): the reachability probes, and
    the size of an image (the download estimate) or of the HTML page."""
    def do_head(h):
        path = h.path.split("?")[0]
        with srv.lock:
            srv.log.append({"method": "HEAD", "path": path, "url": h.path,
                            "headers": dict(h.headers), "body": b""})
        body = srv.HTML_PAGE if path == HTML_PATH else srv.images.get(path, b"")
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
    srv.httpd.RequestHandlerClass.do_HEAD = do_head


@pytest.fixture
def hpa_server(server):
    srv = server
    _add_head(srv)
    for name, body in ZENODO.items():
        srv.routes[f"{ZPATH}/{name}/content"] = [srv.send(200, body, {"Content-Type": "text/csv"})]
    srv.routes["/idmapping/run"] = [srv.send_json({"jobId": "job7"})]
    srv.routes["/idmapping/status/job7"] = [
        srv.send(303, b'{"jobStatus":"FINISHED"}', {"Location": "/idmapping/uniprotkb/results/job7"})]
    page2 = f"{srv.url}/idmapping/uniprotkb/results/job7?cursor=p2&format=tsv&size=500"
    first = srv.send(200, _tsv((P1, ACC[P1], "reviewed", SEQ[P1]), (P2, ACC[P2], "reviewed", SEQ[P2]),
                               (P3, "A0A0X3Y3", "unreviewed", "MKKLLPTAAAGLLLLAAQPAMA")),
                     {"Link": f'<{page2}>; rel="next"'})
    second = srv.send(200, _tsv((P4, ACC[P4], "reviewed", SEQ[P4]), (P6, ACC[P6], "reviewed", SEQ[P6])))
    # paged by cursor (not by a consumed script), so reruns of assemble get both pages again
    srv.routes["/idmapping/uniprotkb/results/job7"] = [
        lambda h: (second if "cursor=p2" in h.path else first)(h)]
    srv.images = {}
    for i, path in enumerate(sorted(PASSING)):
        srv.images[path] = srv.jpeg_bytes(300, (20 + 25 * i, 200 - 20 * i, 90))  # distinct bytes
        srv.routes[path] = [srv.serve_file(srv.images[path])]
    srv.routes[HTML_PATH] = [srv.send(200, srv.HTML_PAGE, {"Content-Type": "text/html"})]
    return srv


def _point_at(monkeypatch, zenodo_base, uniprot_base, image_host):
    monkeypatch.setattr(download, "ZENODO_BASE", zenodo_base)
    monkeypatch.setattr(download, "UNIPROT_BASE", uniprot_base)
    monkeypatch.setattr(hpa, "HPA_IMAGE_HOST", image_host)
    monkeypatch.setattr(download, "ZENODO_FILES", {n: "md5:" + hashlib.md5(b).hexdigest()
                                                   for n, b in ZENODO.items()})
    # The constants above are read when each download runs, so they redirect everything; only
    # the UniProt polling is made fast here.
    monkeypatch.setattr(download, "uniprot_map_ensembl", functools.partial(
        download.uniprot_map_ensembl, poll_interval=0.01, retries=1, backoff=0.001))


@pytest.fixture
def online(hpa_server, monkeypatch):
    _point_at(monkeypatch, hpa_server.url + ZPATH, hpa_server.url, hpa_server.url)
    return hpa_server


def _gets(srv, paths):
    return [r["path"] for r in srv.log if r["method"] == "GET" and r["path"] in paths]


def test_assemble_end_to_end(online, label_map, tmp_path):
    srv = online
    t0 = time.monotonic()
    proteins, images, report = build.assemble(DATA_CFG, label_map, tmp_path, progress=False)
    assert time.monotonic() - t0 < 15

    # reachability probed on all three hosts first
    heads = [r["path"] for r in srv.log if r["method"] == "HEAD"]
    assert sorted(heads[:3]) == sorted([f"{ZPATH}/data_test.csv/content", "/", "/"])
    # then the size of each image to fetch (fewer than the sample size: all of them asked)
    to_fetch = {p for p, pid in PASSING.items() if pid in (P1, P2, P4)} | {HTML_PATH}
    assert sorted(heads[3:]) == sorted(to_fetch)
    est = report["download_estimate"]
    assert (est["n_urls"], est["n_cached"], est["n_to_fetch"], est["sampled_with_size"]) == (6, 0, 6, 6)
    assert est["estimated_bytes"] == sum(len(srv.images.get(p, srv.HTML_PAGE)) for p in to_fetch)
    assert est["free_bytes"] > 0
    assert (tmp_path / "cache" / "zenodo" / "data_train.csv").read_bytes() == ZENODO["data_train.csv"]

    # filters, in order: IF verification, intensity, quantity (missing values fail)
    assert report["source_images"] == 14 and report["source_files"] == ["data_train.csv", "data_test.csv"]
    f = report["filters"]
    assert f["dropped"] == {"if_verification": 2, "intensity": 2, "quantity": 1}
    assert f["n_in"] == 14 and f["n_kept"] == 9 == len(PASSING) + 1
    assert f["n_proteins_in"] == 6 and f["n_proteins_kept"] == 5  # P5 lost every image

    # UniProt: one job over the filtered proteins (version dropped, P5 never asked), two pages
    [run] = [r for r in srv.log if r["path"] == "/idmapping/run"]
    # P6 (only 'nucleoli': no target label) is dropped before UniProt is asked
    assert parse_qs(run["body"].decode())["ids"] == [",".join([P1, P2, P3, P4])]
    assert len(_gets(srv, {"/idmapping/uniprotkb/results/job7"})) == 2
    assert report["uniprot_dropped"] == {P3: "no reviewed (Swiss-Prot) entry"}
    assert report["locations_outside_labels"] == {"nucleoli": 2}  # P4's and P6's kept images

    # images: P3's never requested, the filtered-out ones neither, nor P6's (no target label),
    # the HTML page reported
    assert not _gets(srv, {"/10000/303_A_1_1.jpg", "/10000/303_B_1_1.jpg", "/666/606_A_1_1.jpg", *FILTERED_OUT})
    [failure] = report["image_failures"]
    assert failure["url"] == srv.url + HTML_PATH and "not a valid image" in failure["reason"]
    assert len(_gets(srv, {HTML_PATH})) == 2  # fetched once more, then reported
    assert [p.read_bytes() for p in (tmp_path / "images" / "quarantine").iterdir()] == [srv.HTML_PAGE] * 2

    # proteins: mapped and labelled only (P3 unmapped, P6 only 'nucleoli' -> no target label)
    assert report["dropped_proteins_no_target_label"] == 1 and report["duplicate_image_files"] == 0
    assert report["n_proteins"] == 3 and report["n_images"] == len(FINAL) == 5
    assert report["image_bytes_on_disk"] == sum(len(srv.images[p]) for p in FINAL)
    card = datacard.data_card(proteins.assign(split=["train", "val", "test"]), images, label_map.labels,
                              report, "test")
    assert f"- image files on disk: {download.format_bytes(report['image_bytes_on_disk'])} (estimated before " \
           f"download: {download.format_bytes(est['estimated_bytes'])})" in card
    assert proteins["protein_id"].tolist() == [P1, P2, P4]
    assert proteins["uniprot"].tolist() == [ACC[P1], ACC[P2], ACC[P4]]
    assert proteins["sequence"].tolist() == [SEQ[P1], SEQ[P2], SEQ[P4]]  # not the CSV's stale one
    assert proteins["n_images"].tolist() == [3, 1, 1]
    by_id = proteins.set_index("protein_id")
    # P1 by hand: images 'nucleoplasm;cytosol' x2 and 'nucleoplasm;vesicles' (union; vesicles -> ER)
    assert by_id.loc[P1, "locations"] == "cytosol;nucleoplasm;vesicles"
    assert by_id.loc[P1, "n_location_sets"] == 2
    assert by_id.loc[P1, label_map.labels].tolist() == [1, 1, 0, 1, 0]
    # P2: 'Plasma membrane;Golgi apparatus' -> plasma membrane + ER (golgi -> ER); P4: ER (nucleoli -> none)
    assert by_id.loc[P2, label_map.labels].tolist() == [0, 1, 0, 0, 1]
    assert by_id.loc[P4, label_map.labels].tolist() == [0, 1, 0, 0, 0]
    assert by_id.loc[P4, "antibodies"] == "HPA000045"

    # images: joined to proteins by Ensembl id, id = sha256 of the downloaded file, relative paths
    assert set(images["protein_id"]) == set(proteins["protein_id"])
    assert sorted("/" + p.split("/", 1)[1] for p in images["path"]) == sorted(FINAL)
    for _, row in images.iterrows():
        served = "/" + row["path"].split("/", 1)[1]
        assert FINAL[served] == row["protein_id"]
        assert row["url"] == srv.url + served
        assert not Path(row["path"]).is_absolute() and row["path"].startswith("images/")
        full = tmp_path / row["path"]
        assert full.is_file() and full.read_bytes() == srv.images[served]
        assert row["image_id"] == row["sha256"] == file_sha256(full) == hashlib.sha256(srv.images[served]).hexdigest()
        assert row["sequence"] == SEQ[row["protein_id"]] and row["uniprot"] == ACC[row["protein_id"]]
    assert images["image_id"].is_unique
    c1 = images.set_index("image_name").loc["101_C_1_1.jpg"]  # image-level labels from its own locations
    assert (c1["benchmark_split"], c1["locations"]) == ("test", "nucleoplasm;vesicles")
    assert c1[label_map.labels].tolist() == [0, 1, 0, 1, 0]
    assert images.set_index("image_name").loc["101_A_1_1.jpg", "benchmark_split"] == "train"
    assert not list(tmp_path.rglob("*.part"))

    # a rerun reuses the Zenodo cache and the image cache; only the failed image is tried again
    n_zenodo = len(_gets(srv, {f"{ZPATH}/{n}/content" for n in ZENODO}))
    n_images = len(_gets(srv, set(PASSING)))
    proteins2, images2, report2 = build.assemble(DATA_CFG, label_map, tmp_path, progress=False)
    assert len(_gets(srv, {f"{ZPATH}/{n}/content" for n in ZENODO})) == n_zenodo == 2
    assert len(_gets(srv, set(PASSING))) == n_images
    assert (images2["fetch_status"] == "cached").all()
    pd.testing.assert_frame_equal(proteins2, proteins)
    assert images2["image_id"].tolist() == images["image_id"].tolist()
    assert report2["image_failures"][0]["url"] == failure["url"]


def test_assemble_streaming_embeds_once_keeps_thumbnails(online, label_map, tmp_path):
    srv = online
    calls: list[dict] = []

    def embed(paths):
        for key, path in paths.items():
            assert file_sha256(path) == key and load_image(path).size == (300, 300)  # the full image
        calls.append(dict(paths))
        return {"failures": []}

    proteins, images, report = build.assemble({**DATA_CFG, "stream": True}, label_map, tmp_path,
                                            progress=False, embed=embed)
    embedded = [k for c in calls for k in c]
    # every downloaded image of a mapped, labelled protein embedded exactly once; P6 (nucleoli only)
    # is dropped before its images are fetched
    expected = {hashlib.sha256(srv.images[p]).hexdigest() for p, pid in PASSING.items() if pid not in (P3, P6)}
    assert len(embedded) == len(set(embedded)) and set(embedded) == expected
    assert set(images["image_id"]) == {hashlib.sha256(srv.images[p]).hexdigest() for p in FINAL}
    assert proteins["protein_id"].tolist() == [P1, P2, P4]
    assert [u["url"] for u in report["image_failures"]] == [srv.url + HTML_PATH]

    # full images deleted, thumbnails kept and referenced relative to the profile directory
    assert not [p for p in (tmp_path / "images").rglob("*.jpg") if "thumbnails" not in p.parts]
    for _, row in images.iterrows():
        assert row["path"] == f"images/thumbnails/{row['image_id']}.jpg"
        assert max(load_image(tmp_path / row["path"]).size) == 256
    assert (tmp_path / "images" / "streamed.json").is_file()

    # rerun: nothing fetched or embedded again (only the failed URL is retried)
    n_images, n_calls = len(_gets(srv, set(PASSING))), len(calls)
    n_html = len(_gets(srv, {HTML_PATH}))
    proteins2, images2, report2 = build.assemble({**DATA_CFG, "stream": True}, label_map, tmp_path,
                                               progress=False, embed=embed)
    assert len(_gets(srv, set(PASSING))) == n_images and len(calls) == n_calls
    assert len(_gets(srv, {HTML_PATH})) == n_html + 2
    assert images2["image_id"].tolist() == images["image_id"].tolist()
    assert images2["path"].tolist() == images["path"].tolist()
    pd.testing.assert_frame_equal(proteins2, proteins)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_assemble_unreachable_source_stops_at_once(hpa_server, label_map, monkeypatch, tmp_path):
    dead = f"http://127.0.0.1:{_closed_port()}{ZPATH}"
    _point_at(monkeypatch, dead, hpa_server.url, hpa_server.url)
    profile_dir = tmp_path / "profile"
    t0 = time.monotonic()
    with pytest.raises(OfflineError) as err:
        build.assemble(DATA_CFG, label_map, profile_dir, progress=False)
    assert time.monotonic() - t0 < 3
    msg = str(err.value)
    # one short line: the unreachable host, the kind of failure, where to go (a mirror, Colab)
    host = dead.split("/")[2]
    assert msg.startswith(f"cannot reach {host} (ConnectionError):") and "--mirror" in msg and "Colab" in msg
    assert "\n" not in msg and len(msg) < 250
    assert f"{dead}/data_test.csv/content" in err.value.details  # the full reasons are kept
    assert not profile_dir.exists() and list(tmp_path.iterdir()) == []
    assert {r["method"] for r in hpa_server.log} == {"HEAD"}  # probes only, no download


def test_assemble_names_every_unknown_location_before_any_slow_work(online, label_map, tmp_path):
    del label_map.mapping["nucleoplasm"], label_map.mapping["mitochondria"]  # an older vocabulary
    with pytest.raises(UnknownLocationError) as err:
        build.assemble(DATA_CFG, label_map, tmp_path, progress=False)
    msg = str(err.value)
    # both, counted over the filtered images, with the file and row of each
    assert "2 location(s) unknown" in msg
    assert "'nucleoplasm' x3 (at data_train.csv row 0, data_train.csv row 2, data_test.csv row 0)" in msg
    assert "'mitochondria' x2 (at data_train.csv row 6, data_test.csv row 1)" in msg
    assert not any(r["path"].startswith("/idmapping") for r in online.log)  # UniProt never asked
    assert not (tmp_path / "images").exists()
