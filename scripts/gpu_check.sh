#!/usr/bin/env bash
# The GPU check: run as it is on a GPU machine, from the project root:
#
#   bash scripts/gpu_check.sh [OUT_DIR]          # OUT_DIR default: $OUT, else ./gpu_check_out
#
# It writes JSON and a short summary (summary.md) into OUT_DIR:
#   bench_training.json   proloc bench-training --profile full --device cuda --epochs 3
#   bench_seeds.json      the published loop (batch 2): 5 seeds at once, eager / stacked into one model /
#                         each seed's step captured (CUDA graphs) / both, against one seed; samples/s,
#                         fraction of peak, the published seeds' hours at each rate
#   bench_loader.json     loader-only samples/s at paper shapes
#   bench_images.json     proloc bench-images --device cuda
#   profile_*.json        torch.profiler (CUDA activities) of the corrected and authors steps
#   dry_run_full.json     the full tier's runs and their estimated time on this GPU (seed by seed);
#                         summary.md also gives it with the published seeds at bench_seeds' best rate
#   notebooks.log         the five notebooks on the smoke profile with --device cuda (and, with two
#                         or more GPUs, notebook 03 again with --gpus 2: its runs spread over two ranks)
#
# Bare machine (torch, timm, transformers, pandas, scikit-learn, safetensors; no network): bring the
# rest as wheels. On a machine with the network, from the project root:
#
#   python3 -m pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d .whl \
#       papermill ipykernel iterative-stratification pooch p-scldata
#   # then delete from .whl what the GPU machine already has (torch*, nvidia_*, numpy*, scipy*,
#   # scikit_learn*, pandas*, ...) to stay small
#
# and this script installs them offline: pip install --no-index --find-links .whl (WHEELS=dir to
# point elsewhere). Environment: DEVICE (default cuda), EPOCHS (default 3), SKIP_NOTEBOOKS=1,
# PROFILE (default full; a CPU dry run of this script: DEVICE=cpu PROFILE=smoke SAMPLES=8 SKIP_NOTEBOOKS=1),
# SAMPLES (rows of the training benchmarks; default 512), MODES (bench-seeds modes; default all four).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-$PWD/gpu_check_out}}"
DEVICE="${DEVICE:-cuda}"
EPOCHS="${EPOCHS:-3}"
PROFILE="${PROFILE:-full}"
SAMPLES="${SAMPLES:-512}"
MODES="${MODES:-eager,stacked,captured,stacked+captured}"
WHEELS="${WHEELS:-.whl}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
SUMMARY="$OUT_DIR/summary.md"
: >"$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }

if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --find-links "$WHEELS" papermill ipykernel iterative-stratification pooch p-scldata \
    || say "- wheels: install from $WHEELS failed (notebooks may not run)"
fi
"$PY" - <<'PY' | tee -a "$SUMMARY"
import torch, platform
print(f"# GPU check: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device'}, "
      f"torch {torch.__version__}, python {platform.python_version()}")
PY

step() {  # step NAME OUTFILE CMD...: run, keep the JSON, note success or failure
  local name="$1" out="$2"; shift 2
  local t0=$SECONDS
  if "$@" >"$OUT_DIR/$out" 2>"$OUT_DIR/$name.err"; then
    say "- $name: ok ($((SECONDS - t0)) s) -> $out"
  else
    say "- $name: FAILED (rc $?, $((SECONDS - t0)) s); last lines of $name.err:"
    tail -n 5 "$OUT_DIR/$name.err" | sed 's/^/    /' | tee -a "$SUMMARY"
  fi
}

step bench_training bench_training.json "$PY" -m proloc_lib bench-training --profile "$PROFILE" --device "$DEVICE" --epochs "$EPOCHS" --n-samples "$SAMPLES"
step bench_training_smoke bench_training_smoke.json "$PY" -m proloc_lib bench-training --profile smoke --device "$DEVICE" --n-samples 16 --no-isolate
# the published loop's 5 seeds: 2 epochs per mode, the second reported (compilation falls in the first)
step bench_seeds bench_seeds.json "$PY" -m proloc_lib bench-seeds --profile "$PROFILE" --device "$DEVICE" --config authors --seeds 5 --n-samples 96 --epochs 2 --modes "$MODES"
step bench_loader bench_loader.json "$PY" -m proloc_lib bench-loader --profile "$PROFILE" --device "$DEVICE" --n-samples $((SAMPLES * 4))
step bench_images bench_images.json "$PY" -m proloc_lib bench-images --device "$DEVICE"
step profile_corrected profile_corrected.json "$PY" -m proloc_lib profile-training --profile "$PROFILE" --device "$DEVICE" --config corrected
step profile_authors profile_authors.json "$PY" -m proloc_lib profile-training --profile "$PROFILE" --device "$DEVICE" --config authors --steps 20
step dry_run_full dry_run_full.json "$PY" -m proloc_lib dry-run --profile "$PROFILE" --device "$DEVICE" --json

if [ -z "${SKIP_NOTEBOOKS:-}" ]; then
  data="$(mktemp -d)"
  t0=$SECONDS
  ok=1
  for nb in 01_data_assembly 02_embeddings 03_training 04_baselines 05_figures; do
    if ! "$PY" -m papermill "notebooks/$nb.ipynb" "$data/$nb.ipynb" --cwd notebooks -p profile smoke \
         -p device "$DEVICE" -p data_root "$data/data" >>"$OUT_DIR/notebooks.log" 2>&1; then
      say "- notebook $nb: FAILED (see notebooks.log)"; ok=0; break
    fi
  done
  [ $ok = 1 ] && say "- smoke notebooks on $DEVICE: ok ($((SECONDS - t0)) s)"
  gpus="$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
  if [ $ok = 1 ] && [ "${gpus:-0}" -ge 2 ]; then   # notebook 03 again, its runs spread over two ranks
    t0=$SECONDS
    if "$PY" -m papermill notebooks/03_training.ipynb "$data/03_training_gpus2.ipynb" --cwd notebooks -p profile smoke \
         -p device "$DEVICE" -p data_root "$data/data" -p gpus 2 >>"$OUT_DIR/notebooks.log" 2>&1; then
      say "- notebook 03 with --gpus 2: ok ($((SECONDS - t0)) s)"
    else
      say "- notebook 03 with --gpus 2: FAILED (see notebooks.log)"
    fi
  fi
fi

"$PY" - "$OUT_DIR" <<'PY' | tee -a "$SUMMARY"
import json, sys
from pathlib import Path
d = Path(sys.argv[1])
def load(name):
    try:
        return json.loads((d / name).read_text())
    except Exception:
        return None
t = load("bench_training.json")
if t:
    print(f"\n- training ({t['device_name']}): authors {t['samples_per_s_authors']:.1f} samples/s, corrected "
          f"{t['samples_per_s_corrected']:.1f} ({t['training_speedup']:.1f}x), loader only "
          f"{t['loader_only_samples_per_s']:.0f}; corrected {t['achieved_tflops_corrected']:.1f} TFLOP/s"
          + (f" = {100 * t['fraction_of_peak_corrected']:.1f}% of peak" if t.get('fraction_of_peak_corrected') else ""))
se = load("bench_seeds.json")
if se:
    print(f"- published loop ({se['device_name']}), {se['n_seeds']} seeds at once, batch {se['batch_size']} each, "
          f"padded to {se['padded_width']}; one seed alone: {se['samples_per_s_one_seed']:.1f} samples/s")
    for mode, m in se.get("modes", {}).items():
        peak = f", {100 * m['fraction_of_peak']:.1f}% of peak" if m.get("fraction_of_peak") else ""
        hours = f"; the published seeds: {m['published_seeds_hours']:.2f} h" if m.get("published_seeds_hours") else ""
        note = f" [{'; '.join(m['warnings'])}]" if m.get("warnings") else ""
        print(f"    {mode:17s} {m['samples_per_s']:9.1f} samples/s ({m['achieved_tflops']:.2f} TFLOP/s{peak}{hours}; "
              f"call {m['call_seconds']:.0f} s){note}")
lo = load("bench_loader.json")
if lo:
    print(f"- loader only at paper shapes: {lo['loader_only_samples_per_s']:.0f} samples/s")
im = load("bench_images.json")
if im:
    print(f"- images: {im.get('images_per_s')} images/s end to end, decode {im.get('decode_images_per_s')}")
for name in ("profile_corrected.json", "profile_authors.json"):
    p = load(name)
    if p:
        print(f"- {name}: {p['samples_per_s']:.1f} samples/s in the profiler; top ops by {p['time_basis']}:")
        for op in p["top_ops"][:8]:
            print(f"    {op['share']:6.1%}  {op['self_ms']:9.1f} ms  {op['calls']:6d}x  {op['op'][:90]}")
        print(f"    attention ops seen: {', '.join(p['attention_ops'][:6])}")
dr = load("dry_run_full.json")
if dr:
    print(f"- {dr['profile']} tier: {dr['n_runs']} training runs, estimated {dr['estimated_training_hours']:.2f} h "
          "seed by seed (upper bound)")
    if se and se.get("best_mode"):
        try:
            from proloc_lib.bench.estimate import tier_estimate
            te = tier_estimate(dr, se)
            print(f"- {dr['profile']} tier with the published seeds {te['published_mode']}: {te['tier_hours']:.2f} h "
                  f"(published loop {te['published_hours_one_by_one']:.2f} h -> {te['published_hours_measured']:.2f} h; "
                  "one GPU, upper bound)")
        except Exception as exc:  # a summary line, never a failed check
            print(f"- tier estimate: not computed ({exc})")
PY
echo "wrote $OUT_DIR"
