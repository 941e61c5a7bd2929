"""What the data tests share: a recording HTTP server on 127.0.0.1 (Zenodo, UniProt and the HPA image
host are played by it), the project's HPA label map, edited copies of the fixture tables, and
families of homologous sequences."""
from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from proloc_lib.core.paths import project_path
from proloc_lib.data.labels import LABELS, LabelMap
from proloc_lib.data.mirror import standin_sequence
from proloc_lib.data.sequences import sequence_hash


# -- the recording server ----------------------------------------------------------------------------
class RecordingServer:
    """A threaded HTTP server that plays a script per path (a list of responses, the last one repeated)
    and records every request in ``log``. ``routes[path]`` holds the script; each response is a
    function of the request handler, made by the builders below. Unrouted paths answer 404."""

    HTML_PAGE = b"<!DOCTYPE html><html><body><h1>Service temporarily unavailable</h1></body></html>"

    def __init__(self):
        self.routes: dict[str, list] = {}
        self.log: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self):
                path = urlsplit(self.path).path
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with outer.lock:
                    outer.log.append({"method": self.command, "path": path, "url": self.path,
                                      "headers": dict(self.headers), "body": body})
                    script = outer.routes.get(path)
                    act = (script.pop(0) if len(script) > 1 else script[0]) if script else outer.send(404, b"no route")
                act(self)

            do_GET = do_POST = _handle

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)

    def requests_to(self, path):
        return [r for r in self.log if r["path"] == path]

    # -- responses
    @staticmethod
    def send(status=200, body=b"", headers=None):
        def act(h):
            h.send_response(status)
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        return act

    @classmethod
    def send_json(cls, obj, status=200, headers=None):
        return cls.send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

    @staticmethod
    def serve_file(data: bytes, content_type="image/jpeg"):
        """A static file that honours ``Range: bytes=N-`` with 206 Partial Content."""
        def act(h):
            rng = h.headers.get("Range")
            if rng and rng.startswith("bytes="):
                start = int(rng[6:].split("-")[0])
                h.send_response(206)
                h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                part = data[start:]
            else:
                h.send_response(200)
                part = data
            h.send_header("Content-Type", content_type)
            h.send_header("Content-Length", str(len(part)))
            h.end_headers()
            h.wfile.write(part)
        return act

    @staticmethod
    def truncated(data: bytes, n: int):
        """Promise the whole file, send ``n`` bytes, drop the connection."""
        def act(h):
            h.send_response(200)
            h.send_header("Content-Type", "image/jpeg")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data[:n])
            h.wfile.flush()
            h.close_connection = True
        return act

    @staticmethod
    def jpeg_bytes(size=64, color=(180, 90, 40)) -> bytes:
        """What an image host serves: a plain JPEG of one colour."""
        buf = io.BytesIO()
        Image.new("RGB", (size, size), color).save(buf, format="JPEG", quality=90)
        return buf.getvalue()


@pytest.fixture
def server():
    """A started RecordingServer; shut down after the test."""
    srv = RecordingServer()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


# -- labels and tables -------------------------------------------------------------------------------
@pytest.fixture
def label_map() -> LabelMap:
    """The project's HPA location -> ProLoc label map (data/mappings/hpa_to_proloc5.yaml)."""
    return LabelMap.load(project_path("data/mappings/hpa_to_proloc5.yaml"))


def _edit_csv(src: Path, dst: Path, **changes) -> Path:
    df = pd.read_csv(src, dtype=str, keep_default_na=False)
    for col, cells in changes.items():
        for row, value in cells.items():
            df.loc[row, col] = value
    df.to_csv(dst, index=False)
    return dst


@pytest.fixture
def edit_csv():
    """Function (src, dst, **{column: {row: value}}) -> dst: a copy of a CSV with some cells changed."""
    return _edit_csv


# -- homologous sequences ----------------------------------------------------------------------------
AA = np.array(list("ACDEFGHIKLMNPQRSTVWY"))


def _mutate(seq: str, frac: float, rng) -> str:
    s = np.array(list(seq))
    idx = rng.choice(len(s), int(frac * len(s)), replace=False)
    s[idx] = rng.choice(AA, len(idx))
    return "".join(s)


def _family_tables(n_families=12, per_family=3, seed=0):
    rng = np.random.default_rng(seed)
    rows, fam = [], {}
    for f in range(n_families):
        founder = standin_sequence(f"family{f}")[:220]
        y = (rng.random(5) < 0.35).astype(int)
        y[rng.integers(5)] = 1
        for k in range(per_family):
            pid = f"F{f}_{k}"
            seq = founder if k == 0 else _mutate(founder, 0.45, rng)
            rows.append({"protein_id": pid, "sequence": seq, **dict(zip(LABELS, y))})
            fam[pid] = f
    for i in range(24):
        y = (rng.random(5) < 0.35).astype(int)
        y[rng.integers(5)] = 1
        pid = f"S{i}"
        rows.append({"protein_id": pid, "sequence": standin_sequence(f"single{i}")[:200], **dict(zip(LABELS, y))})
        fam[pid] = None
    proteins = pd.DataFrame(rows)
    proteins["seq_hash"] = proteins["sequence"].map(sequence_hash)
    images = pd.DataFrame({"protein_id": proteins["protein_id"], "antibody": "AB" + proteins["protein_id"]})
    return proteins, images, fam


@pytest.fixture
def family_tables():
    """Factory (n_families=12, per_family=3, seed=0) -> (proteins, images, family by protein id):
    families of homologues (~55-60% identity to their founder, full length) plus 24 unrelated
    singletons (family None); every protein has a label; one antibody per protein."""
    return _family_tables
