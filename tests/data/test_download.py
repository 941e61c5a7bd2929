"""Download caches are written with the user's umask (pooch's files were 0600 whatever it was)."""
from __future__ import annotations

import hashlib
import io
import os
import stat

import pandas as pd
import pytest
from PIL import Image
from test_download import Server, send   # the recorded-response HTTP server of tests/test_download.py

from proloc_lib.data.download import fetch_images, fetch_zenodo

ZPATH = "/api/records/10632698/files"


@pytest.fixture
def server():
    srv = Server()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_cached_downloads_follow_the_umask(server, tmp_path, umask, mode):
    body = b"Protein Id,Antibody Id,locations\nENSG00000000001,HPA000001,nucleoplasm\n"
    server.routes[f"{ZPATH}/data_test.csv/content"] = [send(200, body)]
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (180, 90, 40)).save(buf, format="JPEG")
    server.routes["/5560/a.jpg"] = [send(200, buf.getvalue(), {"Content-Type": "image/jpeg"})]
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
