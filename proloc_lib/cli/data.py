"""Command line for the data-assembly stage.

    python -m proloc_lib.data audit <csv>... [--mapping PATH] [--max-examples N] [--json]
    python -m proloc_lib.data mirror [--port N] [--seconds S] [--vislocas DIR] [--reference CSV]

``audit`` prints what ``hpa.audit`` finds in HPA tables: the Vislocas benchmark layout
(data_train.csv, data_test.csv) and the authors' two layouts. ``--json`` prints the
machine-readable report; its keys are read by other tools and keep their names: per file
(``files``) ``rows``, ``unique_images``, ``proteins``, ``antibodies``, ``duplicate_image_rows``,
``labels`` ({label: {images, proteins}}), ``label_disagreements``,
``proteins_with_mixed_label_sets``; over all files ``unique_images``, ``proteins``, ``labels``,
``label_disagreements``, ``proteins_with_mixed_label_sets``.

``mirror`` serves the offline mirror of the full profile's sources (``proloc_lib.mirror``) on
127.0.0.1 until interrupted or ``--seconds`` pass; point the full profile at the URL it prints
(``data.mirror`` or the notebook parameter ``mirror``).

Exit codes: 0 ok; 1 a run failed; 2 bad arguments or a file that cannot be read (one line on
stderr naming the file and the problem; ``--debug`` shows the traceback); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from proloc_lib.core.errors import UserError, cli_main
from proloc_lib.core.paths import PROJECT_ROOT
from proloc_lib.data import mirror
from proloc_lib.data.audit import audit, format_audit
from proloc_lib.data.labels import LabelMap

DEFAULT_MAPPING = PROJECT_ROOT / "data" / "mappings" / "hpa_to_proloc5.yaml"


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are UserErrors (one line, exit 2 through ``cli_main``)."""

    def error(self, message):
        raise UserError(message)


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


@cli_main("python -m proloc_lib.data")
def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m proloc_lib.data", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p_audit = sub.add_parser("audit", help="check HPA tables (Vislocas or the authors') against the label mapping")
    p_audit.add_argument("csv", nargs="+", type=Path, help="CSV files (Vislocas layout or either authors' layout)")
    p_audit.add_argument("--mapping", type=Path, default=DEFAULT_MAPPING,
                         help=f"label mapping YAML (default: {DEFAULT_MAPPING.relative_to(PROJECT_ROOT)})")
    p_audit.add_argument("--max-examples", type=int, default=10, help="examples shown per section")
    p_audit.add_argument("--json", action="store_true", help="print the machine-readable report")
    p_audit.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p_mirror = sub.add_parser("mirror", help="serve the offline mirror of Zenodo, UniProt and HPA images on 127.0.0.1")
    p_mirror.add_argument("--port", type=int, default=0, help="port (default: any free one)")
    p_mirror.add_argument("--seconds", type=float, default=3600.0, help="stop after this long (default 3600)")
    p_mirror.add_argument("--vislocas", type=Path, default=None, help="folder of data_train.csv/data_test.csv")
    p_mirror.add_argument("--reference", type=Path, default=None, help="proloc_ihs_test.csv (real sequences)")
    p_mirror.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.command == "audit":
        for p in args.csv:
            if not p.exists():
                raise UserError(f"{p}: file not found")
        label_map = load_mapping(args.mapping)
        report = audit(args.csv, label_map)
        if args.json:
            sys.stdout.write(json.dumps(_json_report(report), indent=1, default=str) + "\n")
        else:
            sys.stdout.write(format_audit(report, max_examples=args.max_examples))
    elif args.command == "mirror":

        with mirror.serve(vislocas_dir=args.vislocas, reference_csv=args.reference, port=args.port,
                          max_seconds=args.seconds) as m:
            print(f"offline mirror (SYNTHETIC images, STAND-IN sequences) at {m.url}; "
                  f"use data.mirror: {m.url} (Ctrl-C stops it)", flush=True)
            m.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
