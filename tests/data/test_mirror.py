"""The offline mirror under bad requests and load: 400 with a one-line reason (never a traceback
and no reply), no page linking to itself, expiring ID-mapping jobs, a bounded number of handlers
with a socket timeout."""
from __future__ import annotations

import http.client
import shutil
import socket
import time
from pathlib import Path

import pytest
import requests

from proloc_lib.data import mirror

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
