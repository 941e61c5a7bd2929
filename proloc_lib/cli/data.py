"""``proloc audit`` and ``proloc mirror``: the data-assembly stage's command line.

    proloc audit <csv>... [--mapping PATH] [--max-examples N] [--json]
    proloc mirror [--port N] [--seconds S] [--vislocas DIR] [--reference CSV]

``audit`` prints what ``hpa.audit`` finds in HPA tables: the Vislocas benchmark layout
(data_train.csv, data_test.csv) and the authors' two layouts. ``--json`` prints the
machine-readable report; its keys are read by other tools and keep their names: per file
(``files``) ``rows``, ``unique_images``, ``proteins``, ``antibodies``, ``duplicate_image_rows``,
``labels`` ({label: {images, proteins}}), ``label_disagreements``,
``proteins_with_mixed_label_sets``; over all files ``unique_images``, ``proteins``, ``labels``,
``label_disagreements``, ``proteins_with_mixed_label_sets``.

``mirror`` serves the offline mirror of the full profile's sources (``proloc_lib.data.mirror``)
on 127.0.0.1 until interrupted or ``--seconds`` pass; point the full profile at the URL it prints
(``data.mirror`` or the notebook parameter ``mirror``).

Exit codes: 0 ok; 1 a run failed; 2 bad arguments or a file that cannot be read (one line on
stderr naming the file and the problem; ``--debug`` shows the traceback); 130 interrupted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from proloc_lib.cli.common import CommandParser, prog
from proloc_lib.core.errors import UserError, cli_main
from proloc_lib.core.paths import PROJECT_ROOT
from proloc_lib.data import mirror
from proloc_lib.data.audit import audit, format_audit
from proloc_lib.data.labels import LabelMap

DEFAULT_MAPPING = PROJECT_ROOT / "data" / "mappings" / "hpa_to_proloc5.yaml"


def load_mapping(path: Path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: label mapping not found (--mapping)")
    try:
        return LabelMap.load(path)
    except UserError:
        raise
    except Exception as exc:  # YAML syntax, missing keys, labels it does not list
        raise UserError(f"{path}: not a valid label mapping ({exc})") from None


def _json_report(report: dict) -> dict:
    """The report without the long per-row sections, plus the documented keys first."""
    keys = ["unique_images", "proteins", "labels", "label_source", "label_disagreements",
            "proteins_with_mixed_label_sets", "mapping", "mapping_file"]
    out = {k: report.get(k) for k in keys}
    out["files"] = report["files"]
    out["details"] = {k: v for k, v in report.items() if k not in out}
    return out


@cli_main(prog("audit"))
def audit_command(argv: list[str] | None = None) -> int:
    p = CommandParser("audit", description="Check HPA tables (the Vislocas layout or either of the authors' "
                      "layouts) against the label mapping: images, proteins, labels and disagreements per file.")
    p.add_argument("csv", nargs="+", type=Path, help="CSV files to check (Vislocas layout or either authors' layout)")
    p.add_argument("--mapping", type=Path, default=DEFAULT_MAPPING,
                   help=f"label mapping YAML (default: {DEFAULT_MAPPING.relative_to(PROJECT_ROOT)})")
    p.add_argument("--max-examples", type=int, default=10,
                   help="examples shown per section of the text report (default: 10)")
    p.add_argument("--json", action="store_true",
                   help="print the machine-readable JSON report instead of the text one")
    args = p.parse_args(argv)
    for path in args.csv:
        if not path.exists():
            raise UserError(f"{path}: file not found")
    label_map = load_mapping(args.mapping)
    report = audit(args.csv, label_map)
    if args.json:
        sys.stdout.write(json.dumps(_json_report(report), indent=1, default=str) + "\n")
    else:
        sys.stdout.write(format_audit(report, max_examples=args.max_examples))
    return 0


@cli_main(prog("mirror"))
def mirror_command(argv: list[str] | None = None) -> int:
    p = CommandParser("mirror", description="Serve an offline mirror of the full profile's sources (Zenodo, "
                      "UniProt, HPA images) on 127.0.0.1: real tables, STAND-IN sequences, SYNTHETIC images.")
    p.add_argument("--port", type=int, default=0, help="port to listen on (default: 0, any free one)")
    p.add_argument("--seconds", type=float, default=3600.0,
                   help="stop serving after this many seconds (default: 3600)")
    p.add_argument("--vislocas", type=Path, default=None,
                   help="folder holding data_train.csv and data_test.csv (default: <reference dir>/vislocas, the "
                        "reference dir being $PROLOC_REFERENCE_DIR or ../shared/reference)")
    p.add_argument("--reference", type=Path, default=None,
                   help="the authors' proloc_ihs_test.csv, whose real sequences are served "
                        "(default: <reference dir>/proloc_ihs_test.csv)")
    args = p.parse_args(argv)
    with mirror.serve(vislocas_dir=args.vislocas, reference_csv=args.reference, port=args.port,
                      max_seconds=args.seconds) as m:
        print(f"offline mirror (SYNTHETIC images, STAND-IN sequences) at {m.url}; "
              f"use data.mirror: {m.url} (Ctrl-C stops it)", flush=True)
        m.wait()
    return 0
