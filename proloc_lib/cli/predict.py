"""``proloc predict``: locations of new proteins from a checkpoint, a FASTA file and IHC images."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap

from proloc_lib.cli.common import CommandParser, prog
from proloc_lib.core.errors import EXIT_FAILED, UserError, cli_main
from proloc_lib.core.runtime import resolve_device
from proloc_lib.data.labels import LABELS
from proloc_lib.predict import (
    OUTPUT_COLUMNS,
    _shown,
    check_out_path,
    description_path,
    for_csv,
    predict,
    write_csv,
)


def _epilog(width: int = 92) -> str:
    def para(text: str) -> str:
        return textwrap.fill(text, width)

    columns = "\n".join(textwrap.fill(text, width, initial_indent=f"  {name:<18} ", subsequent_indent=" " * 21)
                        for name, text in OUTPUT_COLUMNS.items())
    return "\n\n".join([
        para("Images for protein P: DIR/P/*.{jpg,jpeg,png,tif,tiff}, DIR/P.<ext> or DIR/P_*.<ext>."),
        para("Output columns, one row per FASTA record (<label>: the label with spaces as underscores):") + "\n"
        + columns,
        para("With --out, <out>.json beside the CSV records the label order, thresholds, the call rule "
             "(prob >= threshold, or prob > threshold for the published fixed 0.5), the column meanings and "
             "the checkpoint's provenance."),
        para("Exit codes: 0 ok, 1 no protein predicted or a download failed, 2 bad arguments or files, "
             "130 interrupted; --debug shows the traceback of an error.")])


# -- command line ------------------------------------------------------------------------------
def _parser() -> CommandParser:
    p = CommandParser("predict",
                      description="Predict protein subcellular locations with a ProLoc-IHS checkpoint.",
                      epilog=_epilog())
    p.formatter_class = argparse.RawDescriptionHelpFormatter   # the column table keeps its lines
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint folder (config.json + model.safetensors; required)")
    p.add_argument("--fasta", required=True,
                   help="FASTA file of protein sequences; the id is the header's first word (required)")
    p.add_argument("--images", help="folder of IHC images, matched to the FASTA ids by the rule below "
                                    "(required: the fusion model needs images)")
    p.add_argument("--out", help="output CSV (default: standard output); checked before any work")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    p.add_argument("--labels", help="comma-separated label names, in order, that the checkpoint must have "
                                    "(default: the project's five labels)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr (default: shown)")
    return p


@cli_main(prog("predict"))
def predict_command(argv: list[str] | None = None) -> int:
    """CLI entry point: 0 when at least one protein was predicted, 1 when none, 2 on errors."""
    args = _parser().parse_args(argv)
    if args.out:  # before any work: a bad --out must not cost the predictions
        check_out_path(args.out, inputs=(args.fasta,))
    try:
        device = resolve_device(args.device)  # unknown or unavailable device: fail before any work
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"--device: {exc}") from None
    labels = [x.strip() for x in args.labels.split(",")] if args.labels else LABELS
    df = predict(args.checkpoint, args.fasta, args.images, device=device,
                 progress=not args.no_progress, batch_size=args.batch_size, labels=labels)
    failed = df[df["error"] != ""]
    if len(failed):
        print(f"warning: {len(failed)} of {len(df)} protein(s) not predicted: "
              + _shown(failed["protein_id"], 10), file=sys.stderr)
        for pid, err in zip(failed["protein_id"], failed["error"]):
            print(f"  {pid}: {err}", file=sys.stderr)
    notes = {"truncated": "sequence(s) truncated", "windows": "sequence(s) embedded in windows"}
    summary = [f"{int((df['sequence_use'] == k).sum())} {v}" for k, v in notes.items()
               if (df["sequence_use"] == k).any()]
    if df["n_images_skipped"].sum():
        summary.append(f"{int(df['n_images_skipped'].sum())} image(s) skipped")
    if df.attrs.get("unmatched_images"):
        summary.append(f"{len(df.attrs['unmatched_images'])} image file(s) matched no FASTA id")
    if summary:
        print(f"summary: {'; '.join(summary)} (details in the warnings column and above)", file=sys.stderr)
    if args.out:
        write_csv(df, args.out)
        print(f"wrote {len(df) - len(failed)} prediction(s) to {args.out} (thresholds, call rule and columns: "
              f"{description_path(args.out)})", file=sys.stderr)
    else:
        try:
            for_csv(df).to_csv(sys.stdout, index=False)
            sys.stdout.flush()
        except BrokenPipeError:  # `... | head`: the reader left; stop quietly, no traceback
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_FAILED
    return EXIT_FAILED if len(failed) == len(df) else 0
