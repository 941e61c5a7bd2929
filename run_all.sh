#!/usr/bin/env bash
# Run the whole study: notebooks 01..05 in order with papermill, or the test suite.
#
#   bash run_all.sh                    # offline demo profile on CPU (minutes)
#   bash run_all.sh --profile full     # paper scale: GPU + internet (Colab)
#   bash run_all.sh --test             # install the test extras and run pytest (notebooks included)
#
# Options: --profile NAME  --seed N  --device auto|cpu|cuda  --data-root DIR
#          --no-venv (use the current Python, e.g. on Colab; automatic there)  --test
set -euo pipefail
cd "$(dirname "$0")"

profile=demo seed=0 device=auto data_root="" mode=run use_venv=1
[ -n "${COLAB_RELEASE_TAG:-}" ] && use_venv=0   # Colab: keep its CUDA torch, no venv
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --device) device="$2"; shift 2 ;;
    --data-root) data_root="$2"; shift 2 ;;
    --no-venv) use_venv=0; shift ;;
    --test) mode=test; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "run_all.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ -f "configs/$profile.yaml" ] || { echo "run_all.sh: no profile '$profile' (configs/*.yaml)" >&2; exit 2; }

# -- environment: a local venv from pyproject.toml, reinstalled only when the declaration changes
extras=""; [ "$mode" = test ] && extras="[test]"
if [ "$use_venv" = 1 ]; then
  venv="${PROLOC_VENV:-.venv}"
  [ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
  py="$venv/bin/python"
else
  py="${PYTHON:-python3}"
fi
stamp_dir="$("$py" -c 'import sys; print(sys.prefix)')"
stamp="$stamp_dir/.proloc-install-$(sha256sum pyproject.toml | cut -c1-16)${extras:+-test}"
if [ ! -f "$stamp" ]; then
  echo "== installing proloc-ihs$extras into $stamp_dir"
  "$py" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$py" -m pip install --quiet --disable-pip-version-check -e ".$extras"
  touch "$stamp"
fi
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
[ -n "$data_root" ] && export PROLOC_DATA_ROOT="$(realpath -m "$data_root")"

if [ "$mode" = test ]; then
  exec "$py" -m pytest
fi

# -- the study: each notebook reads only what earlier ones wrote
out="executed/$profile"
mkdir -p "$out"
for nb in notebooks/0[1-5]_*.ipynb; do
  name="$(basename "$nb")"
  echo "== $profile: $name"
  "$py" -m papermill "$nb" "$out/$name" --cwd notebooks --progress-bar \
    -p profile "$profile" -p seed "$seed" -p device "$device" \
    || { echo "run_all.sh: $name failed; the executed copy with the error is $out/$name" >&2; exit 1; }
done
echo "== done: executed notebooks in $out/, figures in figures/$profile/"
