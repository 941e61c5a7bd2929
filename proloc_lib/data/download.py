"""Everything that talks HTTP: Zenodo files, HPA images and the UniProt ID-mapping service.

Base URLs are parameters so the tests can serve recorded responses from 127.0.0.1; polling
and back-off intervals are parameters so those tests run fast. Errors name the file, row,
id or URL concerned.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import time
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pandas as pd
import requests

from proloc_lib.core.fileio import file_sha256, umask_mode
from proloc_lib.core.progress import bar as progress_bar
from proloc_lib.data.images import BadImageError, load_image
from proloc_lib.data.sequences import InvalidSequenceError, clean_sequence

log = logging.getLogger(__name__)
ZENODO_RECORD = "10632698"  # Vislocas benchmark
ZENODO_BASE = f"https://zenodo.org/api/records/{ZENODO_RECORD}/files"
ZENODO_FILES = {
    "normalLabeled.csv": "md5:37dff5cc73458fe529eb860c9a2ab900",
    "data_train.csv": "md5:0236eb02e2f906282ccea4cf47a84591",
    "data_test.csv": "md5:3e9f1ddaf5e14d7a61354f0884b1f002",
}
# The authors' own test table: dataset/test.csv of github.com/xinshuaiiii/ProLoc-IHS at the commit that
# added it (unchanged since); the labels the paper scored its test images against
GITHUB_RAW = "https://raw.githubusercontent.com"
AUTHORS_TABLE = {"name": "proloc_ihs_test.csv",
                 "path": "xinshuaiiii/ProLoc-IHS/8c69731341ddade74e8ebcbbceffbeb4c1258a9c/dataset/test.csv",
                 "hash": "md5:bff71dd07ee868fdeb03461ff2ca19a4"}
UNIPROT_BASE = "https://rest.uniprot.org"
USER_AGENT = "proloc-ihs/0.1 (reproduction study; python-requests)"
RETRY_STATUS = {429, 500, 502, 503, 504}
STREAM_LEDGER = "streamed.json"  # in an image cache: what stream_images embedded (and deleted)


class ChecksumError(ValueError):
    """A downloaded file whose hash is not the published one (the file is not kept)."""


class DownloadError(RuntimeError):
    """A URL that could not be fetched after all retries."""


class UniProtJobError(RuntimeError):
    """A UniProt ID-mapping job that ended in an error state."""


# ----------------------------------------------------------------------------- Zenodo

def fetch_zenodo(name: str, cache_dir, base_url: str | None = None, known_hash: str | None = None,
                 progress: bool = True) -> Path:
    """Download one Vislocas file through pooch, checked against its published MD5.

    A cached file with the right hash is reused. On a mismatch pooch deletes its temporary
    download; we re-raise as ChecksumError naming the file and both hashes.
    """
    if known_hash is None:
        if name not in ZENODO_FILES:
            raise KeyError(f"unknown Zenodo file '{name}' (known: {sorted(ZENODO_FILES)})")
        known_hash = ZENODO_FILES[name]
    url = f"{(base_url or ZENODO_BASE).rstrip('/')}/{name}/content"  # default read now: mirrors/tests may patch it
    return fetch_pinned(url, name, known_hash, cache_dir, what="Zenodo file", progress=progress)


def fetch_authors_table(cache_dir, base_url: str | None = None, progress: bool = True) -> Path:
    """The authors' own test table (``AUTHORS_TABLE``: their repository's dataset/test.csv at a
    pinned commit), checked against its MD5; ``base_url`` replaces the GitHub raw host (a mirror)."""
    url = f"{(base_url or GITHUB_RAW).rstrip('/')}/{AUTHORS_TABLE['path']}"
    return fetch_pinned(url, AUTHORS_TABLE["name"], AUTHORS_TABLE["hash"], cache_dir,
                        what="the authors' test table", progress=progress)


def fetch_pinned(url: str, name: str, known_hash: str, cache_dir, *, what: str, progress: bool = True) -> Path:
    """Download ``url`` into ``cache_dir/name`` through pooch, checked against ``known_hash``
    ("md5:..."); a cached file with the right hash is reused, a wrong one is never kept."""
    import pooch

    cache_dir = Path(cache_dir)
    try:
        path = pooch.retrieve(url, known_hash=known_hash, fname=name, path=cache_dir,
                              progressbar=progress)
    except ValueError as exc:
        got = re.search(r"but got (\w+)", str(exc))
        target = cache_dir / name
        alg, _, want = known_hash.rpartition(":")
        if target.exists() and pooch.file_hash(str(target), alg=alg or "sha256") != want.lower():
            target.unlink()  # a stale corrupt copy: pooch keeps it when the new download fails too
        raise ChecksumError(f"{what} {name} from {url}: checksum mismatch, expected {known_hash}, "
                            f"got {got.group(1) if got else '?'}; nothing kept in {cache_dir}") from exc
    except requests.RequestException as exc:
        raise DownloadError(f"{what} {name}: could not download {url}: {exc}") from exc
    os.chmod(path, umask_mode())   # pooch moves its 0600 temporary file into place: the umask decides
    return Path(path)


# ----------------------------------------------------------------------------- HTTP helpers

def _session(session: requests.Session | None) -> requests.Session:
    if session is None:
        session = requests.Session()
        session.headers["User-Agent"] = USER_AGENT
    return session


class _RateLimiter:
    """At most ``per_s`` request starts per second (polite to the HPA image server)."""

    def __init__(self, per_s: float | None):
        self.interval = 1.0 / per_s if per_s else 0.0
        self.next_at = 0.0

    def wait(self) -> None:
        now = time.monotonic()
        if now < self.next_at:
            time.sleep(self.next_at - now)
        self.next_at = max(now, self.next_at) + self.interval


def _request(session, method: str, url: str, retries: int, backoff: float, limiter=None,
             **kwargs) -> requests.Response:
    """One request, retried with exponential back-off on 429/5xx and connection errors."""
    for attempt in range(retries + 1):
        if limiter is not None:
            limiter.wait()
        try:
            resp = session.request(method, url, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        else:
            if resp.status_code not in RETRY_STATUS:
                return resp
            reason = f"HTTP {resp.status_code}"
            resp.close()
        if attempt < retries:
            delay = backoff * 2 ** attempt
            log.info("%s %s failed (%s); retry %d/%d in %.2fs", method, url, reason, attempt + 1, retries, delay)
            time.sleep(delay)
    raise DownloadError(f"{method} {url}: {reason} after {retries + 1} attempts")


# ----------------------------------------------------------------------------- images

def _relative_path(url: str) -> Path:
    """Cache path mirroring the URL path (``5560/15519_B_9_7.jpg``): unique as HPA's is."""
    parts = [p for p in urlsplit(url).path.split("/") if p not in ("", ".", "..")]
    if not parts:
        raise ValueError(f"URL has no file path: {url}")
    return Path(*parts)


def _download_to_part(session, url: str, part: Path, retries: int, backoff: float, limiter,
                      timeout: float) -> None:
    """Stream ``url`` into ``part``, resuming from its current size with an HTTP Range."""
    for attempt in range(retries + 1):
        have = part.stat().st_size if part.exists() else 0
        # identity encoding: byte ranges and Content-Length then count the file's own bytes
        headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={have}-"} if have else {})}
        resp = _request(session, "GET", url, retries=retries, backoff=backoff, limiter=limiter,
                        headers=headers, stream=True, timeout=timeout)
        with resp:
            if resp.status_code == 416 and have:
                # Range not satisfiable: the part is already whole (validation decides)
                return
            if resp.status_code not in (200, 206):
                raise DownloadError(f"GET {url}: HTTP {resp.status_code}")
            mode = "wb"  # a 200 means the server ignored Range: start over
            if resp.status_code == 206:
                start = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
                if not start or int(start.group(1)) != have:
                    part.unlink(missing_ok=True)  # a range we did not ask for: restart cleanly
                    reason = f"server sent range '{resp.headers.get('Content-Range')}' for bytes={have}-"
                    continue
                mode = "ab"
            expected = resp.headers.get("Content-Length")
            # urllib3 would raise on a short body and discard the bytes it buffered; keep
            # them (the length is checked below) so the next request resumes after them.
            if hasattr(resp.raw, "enforce_content_length"):
                resp.raw.enforce_content_length = False
            written = 0
            try:
                with open(part, mode) as fh:
                    for chunk in resp.iter_content(chunk_size=1 << 16):
                        fh.write(chunk)
                        written += len(chunk)
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                reason = f"transfer broken after {written} bytes ({type(exc).__name__})"
            else:
                if expected is None or written >= int(expected):
                    return
                reason = f"transfer ended at {written} of {expected} bytes"
        if attempt < retries:
            log.info("GET %s: %s; resuming in %.2fs", url, reason, backoff * 2 ** attempt)
            time.sleep(backoff * 2 ** attempt)
    raise DownloadError(f"GET {url}: {reason} after {retries + 1} attempts")


def _quarantine(path: Path, cache_dir: Path, rel: Path) -> Path:
    qdir = cache_dir / "quarantine"
    qdir.mkdir(parents=True, exist_ok=True)
    stem = "__".join(rel.parts)
    n = 0
    while (qdir / f"{stem}.{n}").exists():
        n += 1
    dest = qdir / f"{stem}.{n}"
    shutil.move(str(path), str(dest))
    return dest


def fetch_images(rows, cache_dir, rate_limit_per_s: float | None = 5, retries: int = 4,
                 backoff: float = 0.5, session: requests.Session | None = None,
                 progress: bool = True, base_url: str | None = None, timeout: float = 60,
                 min_side: int | None = None) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Download the images of ``rows`` (a table with a ``url`` column) into ``cache_dir``.

    Resumable (``.part`` files continued with HTTP Range), retried with exponential back-off,
    rate-limited, and reusable: a valid file already in the cache is never fetched or
    overwritten again. Each file must decode through ``images.load_image``; one that does not
    (an HTML error page served with 200, a truncated file) is moved to
    ``cache_dir/quarantine/`` and fetched once more. ``base_url`` replaces scheme and host.

    Returns the fetched rows with ``path``, ``sha256`` and ``fetch_status`` (cached,
    downloaded, refetched), and the failures as (url, reason), which the caller must report.
    """
    table = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    if "url" not in table.columns:
        raise KeyError(f"fetch_images needs a 'url' column (have {list(table.columns)})")
    if not table.index.is_unique:  # results are keyed by row label
        table = table.reset_index(drop=True)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    session = _session(session)
    limiter = _RateLimiter(rate_limit_per_s)
    check = {"min_side": min_side} if min_side is not None else {}
    paths, hashes, statuses, failures = {}, {}, {}, []

    for idx, url in progress_bar(list(table["url"].items()), desc="HPA images", disable=not progress):
        if pd.isna(url):
            failures.append((str(url), f"row {idx}: no URL"))
            continue
        if base_url:
            url = base_url.rstrip("/") + urlsplit(url).path
        rel = _relative_path(url)
        dest = cache_dir / rel
        status = "downloaded"
        if dest.exists():
            try:
                load_image(dest, **check)
                paths[idx], hashes[idx], statuses[idx] = str(dest), file_sha256(dest), "cached"
                continue
            except BadImageError as exc:
                log.warning("cached %s is not a valid image (%s); quarantined", dest, exc)
                _quarantine(dest, cache_dir, rel)
                status = "refetched"
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        reasons = []
        for attempt in range(2):  # the first download, then one fresh refetch
            try:
                _download_to_part(session, url, part, retries, backoff, limiter, timeout)
            except DownloadError as exc:
                reasons.append(str(exc))
                break  # the transport already retried; a second round would not help
            try:
                load_image(part, **check)
            except BadImageError as exc:
                moved = _quarantine(part, cache_dir, rel)
                reasons.append(f"not a valid image ({str(exc).replace(str(part), url)}); "
                               f"quarantined as {moved.name}")
                status = "refetched"
                continue
            os.replace(part, dest)
            paths[idx], hashes[idx], statuses[idx] = str(dest), file_sha256(dest), status
            break
        if idx not in paths:
            failures.append((url, "; ".join(reasons)))

    if failures:
        log.warning("%d of %d images failed; see the failures list", len(failures), len(table))
    ok = table.loc[list(paths)].copy()
    ok["path"] = pd.Series(paths)
    ok["sha256"] = pd.Series(hashes)
    ok["fetch_status"] = pd.Series(statuses)
    return ok, failures


def estimate_download(urls, cache_dir, sample: int = 32, seed: int = 0, rate_limit_per_s: float | None = 5,
                      retries: int = 2, backoff: float = 0.5, session: requests.Session | None = None,
                      timeout: float = 30) -> dict:
    """Estimated bytes still to download for ``urls``, from the sizes of a seeded sample.

    URLs already in ``cache_dir`` (or in its streaming ledger) cost nothing; of the others,
    ``sample`` are asked for their size (HEAD, ``Content-Length``) and the mean is scaled to all
    of them. A HEAD that fails or gives no size is counted and left out. Also returns the free space of ``cache_dir``'s
    disk, so a full download that cannot fit is seen before it starts (use streaming then).
    """
    urls = [u for u in dict.fromkeys(urls) if isinstance(u, str)]
    cache_dir = Path(cache_dir)
    ledger = cache_dir / STREAM_LEDGER
    streamed = set(json.loads(ledger.read_text())) if ledger.exists() else set()
    todo = [u for u in urls if u not in streamed and not (cache_dir / _relative_path(u)).exists()]
    picked = random.Random(seed).sample(todo, min(sample, len(todo)))
    session, limiter = _session(session), _RateLimiter(rate_limit_per_s)
    sizes = []
    for url in picked:
        try:
            resp = _request(session, "HEAD", url, retries, backoff, limiter, allow_redirects=True, timeout=timeout)
            size = int(resp.headers.get("Content-Length", "")) if resp.status_code == 200 else None
        except (DownloadError, ValueError):
            size = None
        if size:  # 0 or missing: no information
            sizes.append(size)
    probe = cache_dir
    while not probe.exists():
        probe = probe.parent
    mean = sum(sizes) / len(sizes) if sizes else None
    return {"n_urls": len(urls), "n_cached": len(urls) - len(todo), "n_to_fetch": len(todo),
            "sampled": len(picked), "sampled_with_size": len(sizes),
            "mean_bytes": None if mean is None else round(mean),
            "estimated_bytes": 0 if not todo else (None if mean is None else round(mean * len(todo))),
            "free_bytes": shutil.disk_usage(probe).free}


def format_bytes(n: float | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def stream_images(rows, cache_dir, embed, chunk_size: int = 32, thumbnail_px: int | None = 256,
                  **fetch_kwargs) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Small-disk mode (Colab): fetch a chunk, validate, embed, keep a thumbnail, delete the image.

    ``embed({sha256: path})`` is the embedding stage's API (e.g. ``embeddings.extract_images``
    with a store); it returns a report whose ``failures`` list items with ``key``. A ledger
    (``streamed.json``, rewritten atomically after each chunk) records what is done, so a rerun
    neither downloads nor embeds those images again. Returns the done rows with ``sha256`` and
    ``path`` (the thumbnail, or None) and the failures as (url, reason).
    """
    table = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    ledger_path = cache_dir / STREAM_LEDGER
    ledger = json.loads(ledger_path.read_text()) if ledger_path.exists() else {}
    # each URL once: rows repeating an image would otherwise find its file already deleted
    todo = table[~table["url"].isin(ledger)].drop_duplicates("url")
    failures: list[tuple[str, str]] = []
    for start in range(0, len(todo), chunk_size):
        ok, fails = fetch_images(todo.iloc[start:start + chunk_size], cache_dir, **fetch_kwargs)
        failures += fails
        if not len(ok):
            continue
        report = embed(dict(zip(ok["sha256"], ok["path"])))
        bad = {f["key"]: f.get("error", "") for f in (report or {}).get("failures", [])}
        for url, sha, path in zip(ok["url"], ok["sha256"], ok["path"]):
            if sha in bad:  # keep the file for inspection; it is listed, not dropped silently
                failures.append((url, f"embedding failed: {bad[sha]}"))
                continue
            thumb = None
            if thumbnail_px:
                thumb = cache_dir / "thumbnails" / f"{sha}.jpg"
                thumb.parent.mkdir(exist_ok=True)
                im = load_image(path)
                im.thumbnail((thumbnail_px, thumbnail_px))
                im.save(thumb, quality=85)
                thumb = str(thumb)
            ledger[url] = {"sha256": sha, "thumbnail": thumb}
            Path(path).unlink()
        tmp = ledger_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(ledger, indent=1))
        os.replace(tmp, ledger_path)
    done = table[table["url"].isin(ledger)].copy()
    done["sha256"] = done["url"].map(lambda u: ledger[u]["sha256"])
    done["path"] = done["url"].map(lambda u: ledger[u]["thumbnail"])
    return done, failures


# ----------------------------------------------------------------------------- UniProt

_NEXT_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


def _next_link(headers) -> str | None:
    m = _NEXT_LINK.search(headers.get("Link", ""))
    return m.group(1) if m else None


def _wait_for_job(session, base_url: str, job_id: str, batch: str, poll_interval: float,
                  timeout_s: float, retries: int, backoff: float) -> str:
    """Poll the job until it finishes; return the URL of its results."""
    status_url = f"{base_url}/idmapping/status/{job_id}"
    deadline = time.monotonic() + timeout_s
    while True:
        resp = _request(session, "GET", status_url, retries, backoff, allow_redirects=False, timeout=60)
        if resp.is_redirect:
            # finished: the service redirects to the results (Location header)
            return urljoin(status_url, resp.headers["Location"])
        if resp.status_code != 200:
            raise UniProtJobError(f"UniProt job {job_id} ({batch}): status answered HTTP "
                                  f"{resp.status_code}: {resp.text[:200]}")
        body = resp.json()
        state = str(body.get("jobStatus", "")).upper()
        if state in ("NEW", "RUNNING", "QUEUED") and time.monotonic() >= deadline:
            raise TimeoutError(f"UniProt job {job_id} ({batch}) still {state} after {timeout_s}s")
        if state in ("NEW", "RUNNING", "QUEUED"):
            time.sleep(poll_interval)
            continue
        if state == "FINISHED" or "results" in body or "failedIds" in body:
            details = _request(session, "GET", f"{base_url}/idmapping/details/{job_id}", retries, backoff,
                               timeout=60)
            details.raise_for_status()
            return details.json()["redirectURL"]
        raise UniProtJobError(f"UniProt job {job_id} ({batch}) ended as {state or 'unknown'}: "
                              f"{body.get('errors') or body.get('messages') or body}")


def _read_tsv_pages(session, url: str, job_id: str, retries: int, backoff: float) -> list[dict]:
    """All rows of a paged TSV result, following ``Link: <...>; rel="next"``."""
    rows: list[dict] = []
    params = {"format": "tsv", "fields": "accession,reviewed,sequence", "size": 500}
    while url:
        resp = _request(session, "GET", url, retries, backoff, params=params, timeout=120)
        if resp.status_code != 200:
            raise UniProtJobError(f"UniProt job {job_id}: results page {url} answered HTTP {resp.status_code}")
        lines = [ln for ln in resp.text.splitlines() if ln.strip()]
        if lines:
            header = lines[0].split("\t")
            for ln in lines[1:]:
                rows.append(dict(zip(header, ln.split("\t"))))
        url, params = _next_link(resp.headers), None  # the next link carries the query already
    return rows


def uniprot_map_ensembl(gene_ids, base_url: str | None = None, batch_size: int = 500,
                        poll_interval: float = 3.0, timeout_s: float = 600, session=None,
                        retries: int = 4, backoff: float = 1.0) -> tuple[pd.DataFrame, dict]:
    """Map Ensembl gene ids to reviewed (Swiss-Prot) UniProt accessions and sequences.

    Per batch: POST ``/idmapping/run`` (from=Ensembl, to=UniProtKB-Swiss-Prot), poll
    ``/idmapping/status/<jobId>`` until it redirects to (or reports) finished results, read
    the TSV results page by page. Only canonical reviewed entries are kept; a gene with none,
    or with several (ambiguous), is dropped. Returns (table of ensembl, accession, sequence;
    {dropped ensembl id: reason}).
    """
    session = _session(session)
    base_url = (base_url or UNIPROT_BASE).rstrip("/")
    ids = list(dict.fromkeys(re.sub(r"\.\d+$", "", str(g).strip()) for g in gene_ids if not pd.isna(g)))
    hits: dict[str, list[tuple[str, str]]] = {g: [] for g in ids}
    n_batches = max(1, -(-len(ids) // batch_size))
    for b in range(0, len(ids), batch_size):
        chunk = ids[b:b + batch_size]
        batch = f"batch {b // batch_size + 1}/{n_batches}, ids {chunk[0]}..{chunk[-1]}"
        resp = _request(session, "POST", f"{base_url}/idmapping/run", retries, backoff, timeout=60,
                        data={"from": "Ensembl", "to": "UniProtKB-Swiss-Prot", "ids": ",".join(chunk)})
        if resp.status_code != 200 or "jobId" not in resp.json():
            raise UniProtJobError(f"UniProt idmapping/run ({batch}) answered HTTP {resp.status_code}: "
                                  f"{resp.text[:200]}")
        job_id = resp.json()["jobId"]
        results_url = _wait_for_job(session, base_url, job_id, batch, poll_interval, timeout_s, retries, backoff)
        for row in _read_tsv_pages(session, results_url, job_id, retries, backoff):
            gene, acc = row.get("From", ""), row.get("Entry", "")
            if gene not in hits:
                continue
            reviewed = row.get("Reviewed", "reviewed").strip().lower() == "reviewed"
            if reviewed and acc and "-" not in acc:  # "P12345-2" would be a non-canonical isoform
                hits[gene].append((acc, row.get("Sequence", "")))

    out, dropped = [], {}
    for gene, entries in hits.items():
        entries = list(dict.fromkeys(entries))
        if not entries:
            dropped[gene] = "no reviewed (Swiss-Prot) entry"
        elif len({a for a, _ in entries}) > 1:
            dropped[gene] = "ambiguous: several Swiss-Prot entries " + ", ".join(sorted({a for a, _ in entries}))
        else:
            acc, seq = entries[0]
            try:
                out.append({"ensembl": gene, "accession": acc,
                            "sequence": clean_sequence(seq, where=f"UniProt {acc} (for {gene})")})
            except InvalidSequenceError as exc:
                dropped[gene] = str(exc)
    if dropped:
        log.warning("UniProt mapping dropped %d of %d genes", len(dropped), len(ids))
    return pd.DataFrame(out, columns=["ensembl", "accession", "sequence"]), dropped
