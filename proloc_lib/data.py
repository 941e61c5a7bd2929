"""Command line for the data-assembly stage.

    python -m proloc_lib.data audit <csv>... [--mapping PATH] [--max-examples N]

prints what ``hpa.audit`` finds in the authors' HPA tables.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import proloc_lib

from .hpa import audit, format_audit
from .labels import LabelMap

PROJECT_ROOT = Path(proloc_lib.__file__).resolve().parents[1]
DEFAULT_MAPPING = PROJECT_ROOT / "data" / "mappings" / "hpa_to_proloc5.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proloc_lib.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_audit = sub.add_parser("audit", help="check the authors' HPA tables against the label mapping")
    p_audit.add_argument("csv", nargs="+", type=Path, help="authors' CSV files (either layout)")
    p_audit.add_argument("--mapping", type=Path, default=DEFAULT_MAPPING,
                         help=f"label mapping YAML (default: {DEFAULT_MAPPING.relative_to(PROJECT_ROOT)})")
    p_audit.add_argument("--max-examples", type=int, default=10, help="examples shown per section")
    args = parser.parse_args(argv)

    if args.command == "audit":
        missing = [str(p) for p in args.csv if not p.exists()]
        if missing:
            parser.error(f"file(s) not found: {', '.join(missing)}")
        report = audit(args.csv, LabelMap.load(args.mapping))
        sys.stdout.write(format_audit(report, max_examples=args.max_examples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
