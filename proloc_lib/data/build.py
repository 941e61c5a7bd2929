"""The full profile's tables from the public sources (Zenodo, UniProt, HPA) or a mirror of them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd

from proloc_lib.core.errors import UserError
from proloc_lib.core.network import check_reachable
from proloc_lib.data import download, hpa
from proloc_lib.data.hpa import (
    LABEL_SOURCES,
    dedup_images,
    filter_images,
    image_url,
    join_authors_labels,
    label_disagreements,
    parse_vislocas_csv,
    protein_table,
    read_authors_csv,
    source_label_matrix,
)
from proloc_lib.data.labels import LabelMap, add_label_columns


def source_urls(mirror: str | None = None) -> dict:
    """Base URLs of the three sources; a mirror base URL replaces all of them.

    A mirror serves the same paths as the real services: Zenodo's
    ``/api/records/<record>/files/<name>/content``, UniProt's ``/idmapping/...`` and HPA's
    ``/<antibody number>/<image>.jpg`` and GitHub's raw path of the authors' test table
    (``proloc_lib.mirror`` is one; an institutional copy laid out the same way is another).
    """

    if mirror:
        m = str(mirror).rstrip("/")
        if not m.startswith(("http://", "https://")):
            raise UserError(f"data.mirror / --mirror must be an http(s) base URL, got {mirror!r}")
        return {"zenodo": f"{m}/api/records/{download.ZENODO_RECORD}/files", "uniprot": m, "images": m,
                "github": m, "mirror": m}
    return {"zenodo": download.ZENODO_BASE, "uniprot": download.UNIPROT_BASE, "images": hpa.HPA_IMAGE_HOST,
            "github": download.GITHUB_RAW, "mirror": None}


def mirror_provenance(mirror: str | None, timeout: float = 10) -> dict:
    """What a mirror says about itself (``/proloc-mirror.json``); {} for a plain copy of the sources.

    ``proloc_lib.mirror`` answers ``{"synthetic_images": true, "standin_sequences": [...], ...}``:
    the build then marks its images and those sequences as not real, everywhere.
    """
    import requests

    if not mirror:
        return {}
    try:
        r = requests.get(f"{str(mirror).rstrip('/')}/proloc-mirror.json", timeout=timeout)
    except requests.RequestException:
        return {}
    if r.status_code != 200:
        return {}
    try:
        return dict(r.json())
    except ValueError:
        return {}


def assemble(data_cfg: dict, label_map: LabelMap, profile_dir, progress: bool = True, embed=None,
             *, mirror: str | None = None):
    """Build the full profile's tables from public sources (needs network, or a mirror).

    Vislocas tables (Zenodo, MD5-checked) -> the paper's image filters -> labels (the
    tables' own five 0/1 columns by default, ``data.labels: columns``; or the location
    mapping, ``data.labels: mapping``; the two are compared and their disagreements
    reported) -> one row per image and protein (duplicate rows merged; an image shared by
    paralogs stays under each) -> with ``data.authors_table``, the authors' own test labels
    (their pinned test table) beside the benchmark's -> reviewed UniProt sequences by
    Ensembl id -> HPA images (validated, cached, resumable) -> protein and image tables.
    Every protein of the tables is accounted for (``report["protein_accounting"]``).
    ``mirror`` (or ``data.mirror``) is a base URL that replaces all three sources (see
    ``source_urls``); a mirror that declares synthetic images or stand-in sequences
    (``proloc_lib.mirror`` does) is recorded in ``report["provenance"]``. Reachability is
    checked first, so offline it stops at once and writes nothing. With ``embed`` (the
    embedding stage's image API) images are streamed: embedded as they arrive, kept as
    thumbnails, the full files deleted (small disks). Returns (proteins, images, report);
    every drop is counted in the report.
    """
    mirror = mirror or data_cfg.get("mirror")
    urls = source_urls(mirror)
    label_source = data_cfg.get("labels", "columns")
    if label_source not in LABEL_SOURCES:
        raise UserError(f"data.labels must be one of {list(LABEL_SOURCES)}, got {label_source!r}")
    check_reachable([f"{urls['zenodo']}/data_test.csv/content", f"{urls['uniprot']}/", f"{urls['images']}/"]
                    + ([f"{urls['github']}/"] if data_cfg.get("authors_table") else []),
                    hint=("check the mirror URL and that it is running" if mirror else
                          "run the full profile on Colab or any machine with internet, or point it at a "
                          "mirror with data.mirror / --mirror URL (see README)"))
    prov = mirror_provenance(mirror)
    profile_dir = Path(profile_dir)
    files = data_cfg.get("benchmark_files", ["data_train.csv", "data_test.csv"])
    tables = []
    for name in files:
        path = download.fetch_zenodo(name, profile_dir / "cache" / "zenodo", base_url=urls["zenodo"],
                                     progress=progress)
        table = parse_vislocas_csv(path).assign(benchmark_split=Path(name).stem.replace("data_", ""))
        if data_cfg.get("proteins"):  # a trial build of chosen proteins (Ensembl gene ids)
            table = table[table["protein_id"].isin({str(p).split(".")[0] for p in data_cfg["proteins"]})]
        if data_cfg.get("max_proteins"):  # a quick trial build: a seeded subset of each file's proteins
            ids = pd.Series(table["protein_id"].unique())
            keep = set(ids.sample(n=min(int(data_cfg["max_proteins"]), len(ids)),
                                  random_state=int(data_cfg.get("subsample_seed", 0))))
            table = table[table["protein_id"].isin(keep)]
        tables.append(table)
    images = pd.concat(tables, ignore_index=True)
    ledger = ProteinLedger(images)
    report: dict = {"source_images": int(len(images)), "source_files": files,
                    "chosen_proteins": list(data_cfg["proteins"]) if data_cfg.get("proteins") else None,
                    "max_proteins_per_file": data_cfg.get("max_proteins"),
                    "subsample_seed": data_cfg.get("subsample_seed", 0) if data_cfg.get("max_proteins") else None,
                    "sources": {k: v for k, v in urls.items() if k != "mirror"}}
    report["provenance"] = {"mirror": urls["mirror"], "synthetic_images": bool(prov.get("synthetic_images")),
                            "standin_sequences": bool(prov.get("standin_sequences")),
                            "mirror_note": prov.get("note")}
    filters = data_cfg.get("filters", {})
    images, report["filters"] = filter_images(images, filters.get("if_verification"), filters.get("intensity"),
                                              filters.get("quantity"))
    ledger.keep_only(images["protein_id"], "no image passes the image filters")
    where = images["source_file"].map(lambda f: Path(f).name) + " row " + images["source_row"].astype(str)
    # labels: the tables' own columns (the paper's) or the mapping; the other one is compared
    disagreements = label_disagreements(images, label_map)
    if label_source == "columns":
        mat = source_label_matrix(images, label_map.labels, where=", ".join(files))
        images = images.copy()
        for j, lab in enumerate(label_map.labels):
            images[lab] = mat[:, j]
    else:
        label_map.check_known(images["locations"].set_axis(where), where="at")
        images = add_label_columns(images, "locations", label_map, where="image")
    report["label_source"] = {
        "source": label_source,
        "description": ("the tables' own five 0/1 label columns (Vislocas' classes; the paper's labels)"
                        if label_source == "columns" else f"the location mapping {label_map.id}"),
        "mapping_vs_columns": disagreements}
    if disagreements["rows"]:
        print(f"label source '{label_source}': the mapping {label_map.id} and the tables' label columns "
              f"disagree on {disagreements['rows']} rows ({disagreements['proteins']} proteins); see "
              "report['label_source']")
    # known locations outside the five labels: counted (image rows), never guessed
    report["locations_outside_labels"] = dict(Counter(
        loc for s in images["locations"] for loc in label_map.split(s)
        if loc in label_map.mapping and not label_map.mapping[loc]))
    # one row per image before anything is fetched: duplicates would be fetched (and, when
    # streaming, deleted) twice
    images, report["duplicate_image_rows"] = dedup_images(images, label_map.labels)
    # proteins none of whose images carry one of the five labels: dropped before any download
    has_label = images.groupby("protein_id")[label_map.labels].max().sum(axis=1) > 0
    report["dropped_proteins_no_target_label"] = int((~has_label).sum())
    report["dropped_images_no_target_label"] = int((~images["protein_id"].map(has_label)).sum())
    images = images[images["protein_id"].map(has_label)].copy()
    ledger.keep_only(images["protein_id"], "none of its images carries one of the labels")
    if data_cfg.get("authors_table"):
        # the labels the paper scored its test images against (pinned), beside the benchmark's columns
        path = download.fetch_authors_table(profile_dir / "cache" / "github", base_url=urls["github"],
                                            progress=progress)
        images, report["authors_table"] = join_authors_labels(images, read_authors_csv(path), label_map.labels)
        report["authors_table"].update(source=f"{urls['github']}/{download.AUTHORS_TABLE['path']}",
                                       checksum=download.AUTHORS_TABLE["hash"])
    mapped, dropped = download.uniprot_map_ensembl(images["protein_id"].unique(), base_url=urls["uniprot"])
    report["uniprot_dropped"] = dropped
    seqs = mapped.set_index("ensembl")
    images = images[images["protein_id"].isin(seqs.index)].copy()
    ledger.keep_only(images["protein_id"], "UniProt gives no single reviewed sequence", detail=dropped)
    images["sequence"] = images["protein_id"].map(seqs["sequence"])
    images["uniprot"] = images["protein_id"].map(seqs["accession"])
    real = set(prov.get("real_sequence_genes") or [])
    images["sequence_source"] = [("uniprot" if not prov.get("standin_sequences") or g in real else "standin")
                                 for g in images["protein_id"]]
    images["synthetic_image"] = bool(prov.get("synthetic_images"))
    images["url"] = [image_url(a, n, host=urls["images"]) for a, n in zip(images["antibody"], images["image_name"])]
    local = bool(mirror) and urlsplit(urls["images"]).hostname in ("127.0.0.1", "localhost", "::1")
    rate = data_cfg.get("rate_limit_per_s", None if local else 5)  # the HPA server asks for politeness
    est = download.estimate_download(images["url"], profile_dir / "images", rate_limit_per_s=rate)
    report["download_estimate"] = est
    print(f"downloading up to {len(images)} images of {images['protein_id'].nunique()} proteins "
          f"into {profile_dir / 'images'}: {est['n_cached']} cached, about "
          f"{download.format_bytes(est['estimated_bytes'])} to fetch (mean size of "
          f"{est['sampled_with_size']} sampled images), {download.format_bytes(est['free_bytes'])} free")
    if embed is None and (est["estimated_bytes"] or 0) > est["free_bytes"]:
        print("WARNING: the images will likely not fit on this disk; set data.stream: true in the "
              "profile config to embed them as they arrive and keep only thumbnails")
    if embed is None:
        images, failures = download.fetch_images(images, profile_dir / "images", progress=progress,
                                                 rate_limit_per_s=rate)
    else:
        images, failures = download.stream_images(images, profile_dir / "images", embed, progress=progress,
                                                  rate_limit_per_s=rate)
    report["image_failures"] = [{"url": u, "reason": r} for u, r in failures]
    ledger.keep_only(images["protein_id"], "every one of its images failed to download")
    images["image_id"] = images["sha256"]
    images["path"] = [str(Path(p).resolve().relative_to(profile_dir.resolve())) if p else None for p in images["path"]]
    # the same bytes under two URLs of one protein: one row; under several proteins (paralogs): a row
    # each, the store keeps the image once (keyed by checksum)
    dup = images.duplicated(["image_id", "protein_id"])
    report["duplicate_image_files"] = int(dup.sum())
    images = images[~dup].reset_index(drop=True)
    report["image_files_shared_by_proteins"] = int((images.groupby("image_id")["protein_id"].nunique() > 1).sum())
    proteins = protein_table(images, label_map, labels_from=label_source)
    proteins["sequence_source"] = proteins["protein_id"].map(images.groupby("protein_id")["sequence_source"].first())
    # a protein can still end up unlabelled if its labelled images all failed to download
    has_label = proteins[label_map.labels].sum(axis=1) > 0
    report["dropped_proteins_no_target_label"] += int((~has_label).sum())
    proteins = proteins[has_label].reset_index(drop=True)
    images = images[images["protein_id"].isin(proteins["protein_id"])].reset_index(drop=True)
    ledger.keep_only(proteins["protein_id"], "no labelled image left after the download")
    report["protein_accounting"] = ledger.report()
    on_disk = [profile_dir / q for q in images["path"] if isinstance(q, str)]
    # what the download really was: the data card and README quote it
    report["image_bytes_on_disk"] = int(sum(f.stat().st_size for f in on_disk if f.exists()))
    report.update(n_proteins=int(len(proteins)), n_images=int(len(images)),
                  n_unique_images=int(images["image_id"].nunique()))
    longest = proteins.loc[proteins["length"].idxmax()] if len(proteins) else None
    report["longest_sequence"] = (None if longest is None else
                                  {"protein_id": longest["protein_id"], "protein_name": longest["protein_name"],
                                   "length": int(longest["length"])})
    report["provenance"].update(
        n_standin_sequences=int((proteins["sequence_source"] == "standin").sum()),
        n_real_sequences=int((proteins["sequence_source"] == "uniprot").sum()),
        n_synthetic_images=int(images["synthetic_image"].sum()))
    return proteins, images, report


class ProteinLedger:
    """Every protein of the source tables, accounted for: kept, or dropped at a named step.

    ``keep_only(ids, reason)`` after each step that can lose proteins; ``report()`` gives the
    counts per source file and per reason (with the proteins' ids and names) and checks that
    source = kept + dropped.
    """

    def __init__(self, images: pd.DataFrame):
        self.names = dict(zip(images["protein_id"], images["protein_name"].fillna(images["protein_id"])))
        self.files = (images.groupby("protein_id")["benchmark_split"].agg(lambda s: ";".join(sorted(set(s))))
                      .to_dict() if "benchmark_split" in images.columns else {})
        self.alive = set(images["protein_id"])
        self.source = set(self.alive)
        self.dropped: dict[str, list] = {}

    def keep_only(self, ids, reason: str, *, detail: dict | None = None) -> None:
        lost = self.alive - set(ids)
        if lost:
            self.dropped.setdefault(reason, []).extend(
                {"protein_id": p, "protein_name": self.names.get(p), **({"why": detail[p]} if detail and p in detail
                                                                           else {})} for p in sorted(lost))
        self.alive -= lost

    def report(self) -> dict:
        n_dropped = sum(len(v) for v in self.dropped.values())
        if len(self.alive) + n_dropped != len(self.source):
            raise AssertionError(f"protein accounting: {len(self.source)} in the tables, {len(self.alive)} kept "
                                 f"+ {n_dropped} dropped")
        per_file = {}
        for p in self.source:
            f = self.files.get(p, "all")
            per_file.setdefault(f, {"source": 0, "kept": 0})
            per_file[f]["source"] += 1
            per_file[f]["kept"] += int(p in self.alive)
        return {"source_proteins": len(self.source), "kept": len(self.alive), "dropped": n_dropped,
                "per_file": dict(sorted(per_file.items())),
                "dropped_by_reason": {r: {"n": len(v), "proteins": v} for r, v in self.dropped.items()}}


def build_provenance(profile_provenance: dict, report: dict) -> dict:
    """The profile's provenance, corrected by what the build found (a synthetic mirror).

    Stage 01 writes this into its manifest; later stages should read it from there, so every
    number made from mirror data says so.
    """
    out = dict(profile_provenance)
    prov = report.get("provenance") or {}
    if prov.get("synthetic_images"):
        out["synthetic_images"] = True
    if prov.get("n_standin_sequences"):
        out["real_sequences"] = False
        out["standin_sequences"] = int(prov["n_standin_sequences"])
    if prov.get("mirror"):
        out["mirror"] = prov["mirror"]
    return out
