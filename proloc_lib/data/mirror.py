"""An offline mirror of the full profile's three sources, on 127.0.0.1.

It answers at the paths the download code uses for the real services, so pointing the full
profile at its base URL (``data.mirror: http://127.0.0.1:PORT``) runs the whole data path:

* Zenodo: ``/api/records/10632698/files/<name>/content`` serves the real Vislocas tables,
  read in place from ``../shared/reference/vislocas`` (never copied; their MD5s are the pinned
  ones, so the build checks them as it checks Zenodo's);
* HPA images: ``/<antibody number>/<image>.jpg`` for every image of the tables answers a
  small **synthetic** stand-in tile (``proloc_lib.synthetic``), drawn from that row's own
  label columns and seeded by the row's image key, with a JPEG comment and an
  ``X-Proloc-Synthetic`` header saying so;
* the authors' test table at its pinned GitHub path (``download.AUTHORS_TABLE``), read in place
  from ``../shared/reference/proloc_ihs_test.csv`` (the same bytes, so the pinned MD5 holds);
* UniProt ID mapping in the real REST protocol: ``POST /idmapping/run`` -> ``jobId``;
  ``GET /idmapping/status/<job>`` answers RUNNING once, then redirects (303) to the results;
  ``/idmapping/details/<job>`` gives ``redirectURL``; ``/idmapping/uniprotkb/results/<job>``
  pages the TSV (``size``, ``cursor``) with ``Link: <...>; rel="next"`` headers. The 54 test
  proteins get their real sequences (``proloc_ihs_test.csv``); every other gene a seeded
  **stand-in** sequence with an accession starting ``STANDIN``.

``/proloc-mirror.json`` says all this in machine-readable form; ``hpa.assemble`` reads it and
marks the build (report, data card, manifest provenance) as synthetic images + stand-in
sequences. The server is bounded: it stops itself after ``max_seconds``; each connection has a
socket timeout and at most ``MAX_HANDLERS`` are served at once (others get 503 and retry, as
downloads do); ID-mapping jobs expire after ``job_ttl_s``; a malformed request (``size=abc``,
a non-numeric ``Content-Length``) gets 400 with a one-line reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np

from proloc_lib.core.errors import UserError
from proloc_lib.core.paths import reference_dir
from proloc_lib.data import download
from proloc_lib.data.hpa import image_key, parse_vislocas_csv, read_authors_csv
from proloc_lib.data.labels import LABELS
from proloc_lib.data.synthetic import render_tile

TABLES = ("data_train.csv", "data_test.csv")
IMAGE_SIZE = 64            # pixels: the smallest tile synthetic renders; keeps a full mirror build short
STANDIN_PREFIX = "STANDIN"
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
# UniProtKB/Swiss-Prot amino-acid composition (%), for stand-ins that look like proteins
AA_FREQ = [8.25, 1.38, 5.46, 6.72, 3.86, 7.07, 2.27, 5.91, 5.80, 9.65, 2.41, 4.06, 4.74, 3.93, 5.53,
           6.65, 5.36, 6.86, 1.10, 2.92]
SOCKET_TIMEOUT_S = 30      # a client that stops sending frees its handler after this
MAX_HANDLERS = 32          # connections served at once
SLOT_WAIT_S = 2.0          # how long a new connection waits for a free handler before 503
JOB_TTL_S = 600.0          # ID-mapping jobs are forgotten this long after they were submitted
MAX_JOBS = 1000            # and never more than this many are kept
MAX_PAGE = 500             # UniProt's own largest page
MAX_BODY = 1 << 20         # bytes of a POST body
NOTE = ("offline mirror: SYNTHETIC stand-in images drawn from each row's labels; seeded STAND-IN "
        "sequences except the 54 real test proteins; numbers made from it are not results")


class MirrorError(UserError, FileNotFoundError):
    """The mirror cannot start: a table it serves is missing, or the port is taken."""


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "big")


def standin_sequence(gene: str) -> str:
    """A seeded random sequence (length 150-800, Swiss-Prot composition) for one gene."""
    rng = np.random.default_rng(_seed("standin-sequence", gene))
    n = int(rng.integers(150, 801))
    p = np.asarray(AA_FREQ) / sum(AA_FREQ)
    return "M" + "".join(rng.choice(list(AMINO_ACIDS), size=n - 1, p=p))


class MirrorData:
    """What the mirror serves, indexed from the real tables (read in place)."""

    def __init__(self, vislocas_dir=None, reference_csv=None, image_size: int = IMAGE_SIZE):
        self.vislocas_dir = Path(vislocas_dir or reference_dir() / "vislocas")
        self.reference_csv = Path(reference_csv or reference_dir() / "proloc_ihs_test.csv")
        self.image_size = int(image_size)
        self.tables = {}
        for name in TABLES:
            path = self.vislocas_dir / name
            if not path.is_file():
                raise MirrorError(f"{path}: Vislocas table not found (the mirror reads ../shared/reference/vislocas "
                                  "or --vislocas DIR)")
            self.tables[name] = path
        self.images: dict[str, tuple[int, ...]] = {}   # "/<ab number>/<image>" -> label vector
        genes: list[str] = []
        for path in self.tables.values():
            df = parse_vislocas_csv(path)
            y = df[["src:" + lab for lab in LABELS]].to_numpy(dtype=int)
            for ab, name, vec in zip(df["antibody"], df["image_name"], y):
                self.images.setdefault("/" + image_key(ab, name), tuple(int(v) for v in vec))
            genes += list(df["protein_id"])
        self.genes = list(dict.fromkeys(genes))
        self.real: dict[str, str] = {}
        if self.reference_csv.is_file():
            ref = read_authors_csv(self.reference_csv)
            self.real = dict(zip(ref["protein_id"], ref["sequence"]))
        self._cache: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def accession(self, gene: str) -> str:
        # real sequences, but no UniProt accession in the reference table: a mirror id, marked
        return (f"MIRROR{gene[-6:]}" if gene in self.real else f"{STANDIN_PREFIX}{gene[-6:]}")

    def sequence(self, gene: str) -> str:
        return self.real.get(gene) or standin_sequence(gene)

    def image_bytes(self, path: str) -> bytes | None:
        vec = self.images.get(path)
        if vec is None:
            return None
        with self._lock:
            hit = self._cache.get(path)
        if hit is not None:
            return hit
        img = render_tile(list(vec), _seed("mirror-image", path), size=self.image_size)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85, comment=b"proloc-ihs offline mirror: SYNTHETIC stand-in image")
        data = buf.getvalue()
        with self._lock:
            self._cache[path] = data
        return data

    def manifest(self) -> dict:
        return {"mirror": "proloc-ihs offline mirror", "note": NOTE, "synthetic_images": True,
                "standin_sequences": True, "image_size": self.image_size,
                "tables": {n: str(p) for n, p in self.tables.items()}, "n_images": len(self.images),
                "authors_table": str(self.reference_csv) if self.reference_csv.is_file() else None,
                "n_genes": len(self.genes), "real_sequence_genes": sorted(g for g in self.genes if g in self.real)}


class BadRequest(ValueError):
    """A request the mirror answers with 400 and this one-line reason."""


def _int_param(query: dict, name: str, default: int, lo: int, hi: int) -> int:
    raw = (query.get(name) or [str(default)])[0]
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not lo <= value <= hi:
        raise BadRequest(f"{name} must be an integer from {lo} to {hi}, got {raw[:40]!r}")
    return value


class _Handler(BaseHTTPRequestHandler):
    server_version = "proloc-mirror/1"
    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT_S

    def log_message(self, *args):  # quiet: a build makes thousands of requests
        pass

    # -- helpers
    def _send(self, status: int, body: bytes = b"", ctype: str = "application/json", headers=None,
              head: bool = False):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, head: bool = False, headers=None):
        self._send(status, json.dumps(obj).encode(), headers=headers, head=head)

    # -- routes
    def _route(self, head: bool):
        srv = self.server
        data: MirrorData = srv.data
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        srv.count(path)
        if path in ("/", ""):
            return self._json({"mirror": "proloc-ihs", "note": NOTE}, head=head)
        if path == "/proloc-mirror.json":
            return self._json(data.manifest(), head=head)
        if path == "/" + download.AUTHORS_TABLE["path"]:
            if not data.reference_csv.is_file():
                return self._json({"message": f"{path}: no authors' table in this mirror"}, 404, head)
            return self._send(200, data.reference_csv.read_bytes(), "text/plain; charset=utf-8", head=head)
        zprefix = f"/api/records/{download.ZENODO_RECORD}/files/"
        if path.startswith(zprefix) and path.endswith("/content"):
            name = path[len(zprefix):-len("/content")]
            if name not in data.tables:
                return self._json({"status": 404, "message": f"{name} not in this mirror"}, 404, head)
            return self._send(200, data.tables[name].read_bytes(), "text/csv", head=head)
        if path.startswith("/idmapping/status/"):
            job = path.rsplit("/", 1)[-1]
            if job not in srv.jobs:
                return self._json({"messages": [f"job {job} not found"]}, 404, head)
            with srv.lock:
                srv.jobs[job]["polls"] += 1
            if srv.jobs[job]["polls"] == 1:  # the real service answers RUNNING while it works
                return self._json({"jobStatus": "RUNNING"}, head=head)
            return self._send(303, b"", headers={"Location": f"/idmapping/uniprotkb/results/{job}"}, head=head)
        if path.startswith("/idmapping/details/"):
            job = path.rsplit("/", 1)[-1]
            if job not in srv.jobs:
                return self._json({"messages": [f"job {job} not found"]}, 404, head)
            return self._json({"redirectURL": f"{srv.url}/idmapping/uniprotkb/results/{job}"}, head=head)
        if path.startswith("/idmapping/uniprotkb/results/"):
            job = path.rsplit("/", 1)[-1]
            if job not in srv.jobs:
                return self._json({"messages": [f"job {job} not found"]}, 404, head)
            ids = srv.jobs[job]["ids"]
            size = _int_param(query, "size", 25, 1, MAX_PAGE)     # size=0 would link to itself forever
            start = _int_param(query, "cursor", 0, 0, len(ids))
            page = [g for g in ids[start:start + size] if g in srv.known]
            body = "From\tEntry\tReviewed\tSequence\n" + "".join(
                f"{g}\t{data.accession(g)}\treviewed\t{data.sequence(g)}\n" for g in page)
            headers = {}
            if start + size < len(ids):
                headers["Link"] = (f'<{srv.url}{path}?cursor={start + size}&format=tsv'
                                   f'&fields=accession,reviewed,sequence&size={size}>; rel="next"')
            return self._send(200, body.encode(), "text/plain; format=tsv", headers, head)
        img = data.image_bytes(path)
        if img is not None:
            return self._send(200, img, "image/jpeg", {"X-Proloc-Synthetic": "stand-in image"}, head)
        return self._json({"message": f"{path}: not in this mirror"}, 404, head)

    def _answer(self, route, head: bool = False):
        try:
            route(head)
        except BadRequest as exc:
            self.close_connection = True      # a request body may be left unread
            self._json({"messages": [str(exc)]}, 400, head)

    def do_GET(self):
        self._answer(self._route)

    def do_HEAD(self):
        self._answer(self._route, head=True)

    def do_POST(self):
        self._answer(lambda head: self._post())

    def _post(self):
        srv = self.server
        raw = self.headers.get("Content-Length") or "0"
        n = int(raw) if raw.strip().isdigit() else -1
        if not 0 <= n <= MAX_BODY:
            raise BadRequest(f"Content-Length must be an integer from 0 to {MAX_BODY}, got {raw[:40]!r}")
        try:
            form = parse_qs(self.rfile.read(n).decode())
        except UnicodeDecodeError:
            raise BadRequest("the form is not UTF-8 text") from None
        path = urlsplit(self.path).path
        srv.count(path)
        if path != "/idmapping/run":
            return self._json({"message": f"{path}: not in this mirror"}, 404)
        ids = [i.strip() for i in ",".join(form.get("ids", [])).split(",") if i.strip()]
        if form.get("from") != ["Ensembl"] or form.get("to") != ["UniProtKB-Swiss-Prot"] or not ids:
            return self._json({"messages": ["this mirror maps from=Ensembl to=UniProtKB-Swiss-Prot"]}, 400)
        return self._json({"jobId": srv.add_job(ids)})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr, data: MirrorData, *, job_ttl_s: float = JOB_TTL_S):
        super().__init__(addr, _Handler)
        self.data = data
        self.known = set(data.genes)
        self.jobs: dict[str, dict] = {}
        self.job_ttl_s = job_ttl_s
        self._job_ids = itertools.count(1)
        self.lock = threading.Lock()
        self.requests: dict[str, int] = {}
        self.rejected = 0                     # connections answered 503 (all handlers busy)
        self._slots = threading.BoundedSemaphore(MAX_HANDLERS)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def add_job(self, ids: list[str]) -> str:
        """A new ID-mapping job; jobs past their time, and the oldest beyond MAX_JOBS, are dropped."""
        now = time.monotonic()
        with self.lock:
            for job in [j for j, v in self.jobs.items() if now - v["created"] >= self.job_ttl_s]:
                del self.jobs[job]
            while len(self.jobs) >= MAX_JOBS:
                del self.jobs[next(iter(self.jobs))]
            job = f"mirror{next(self._job_ids)}"
            self.jobs[job] = {"ids": ids, "polls": 0, "created": now}
        return job

    def process_request(self, request, client_address):
        """A thread per connection, at most MAX_HANDLERS at once; beyond that, 503 (clients retry)."""
        if not self._slots.acquire(timeout=SLOT_WAIT_S):
            with self.lock:
                self.rejected += 1
            with contextlib.suppress(OSError):
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n"
                                b"Connection: close\r\n\r\n")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def count(self, path: str) -> None:
        kind = ("zenodo" if path.startswith("/api/") else "uniprot" if path.startswith("/idmapping")
                else "github" if path == "/" + download.AUTHORS_TABLE["path"]
                else "other" if path in ("/", "/proloc-mirror.json") else "images")
        with self.lock:
            self.requests[kind] = self.requests.get(kind, 0) + 1


class Mirror:
    """A running mirror: ``url``, ``requests`` (counts by source), ``wait()``, ``stop()``."""

    def __init__(self, server: _Server, max_seconds: float):
        self._server = server
        self.url = server.url
        self.data = server.data
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._stopped = threading.Event()
        self._timer = threading.Timer(max_seconds, self.stop)  # bounded: never outlives its budget
        self._timer.daemon = True

    @property
    def requests(self) -> dict:
        return dict(self._server.requests)

    @property
    def jobs_held(self) -> int:
        """ID-mapping jobs kept in memory now (they expire)."""
        return len(self._server.jobs)

    def start(self) -> "Mirror":
        self._thread.start()
        self._timer.start()
        return self

    def wait(self) -> None:
        while not self._stopped.wait(0.5):
            pass

    def stop(self) -> None:
        if not self._stopped.is_set():
            self._stopped.set()
            self._timer.cancel()
            self._server.shutdown()
            self._server.server_close()


@contextlib.contextmanager
def serve(vislocas_dir=None, reference_csv=None, *, port: int = 0, max_seconds: float = 3600.0,
          image_size: int = IMAGE_SIZE, job_ttl_s: float = JOB_TTL_S):
    """Run the mirror on 127.0.0.1 (``port`` 0: any free one) for at most ``max_seconds``."""
    data = MirrorData(vislocas_dir, reference_csv, image_size=image_size)
    try:
        server = _Server(("127.0.0.1", int(port)), data, job_ttl_s=job_ttl_s)
    except OSError as exc:
        raise MirrorError(f"127.0.0.1:{port}: cannot serve the mirror there ({exc.strerror or exc})") from None
    m = Mirror(server, max_seconds).start()
    try:
        yield m
    finally:
        m.stop()
