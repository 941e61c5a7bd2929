#!/usr/bin/env bash
# Run the whole study: notebooks 01..05 in order with papermill, or the test suite.
#
#   bash run_all.sh                    # offline demo profile on CPU (minutes)
#   bash run_all.sh --profile full     # paper scale: GPU + internet (Colab)
#   bash run_all.sh --profile full --gpus 4   # notebook 03's training runs spread over 4 GPUs
#   bash run_all.sh --dry-run --profile full --device cuda   # time/memory estimate, runs nothing
#   bash run_all.sh --test             # install the test extras, lint (ruff), run pytest (notebooks included)
#
# Options: --profile NAME  --seed N  --device auto|cpu|cuda|cuda:N|mps  --data-root DIR  --mirror URL  --gpus N
#          --force (rerun stages that are up to date)  --no-venv (use the current Python, e.g. on Colab)
#          --pinned (install the exact versions of constraints.txt)  --dry-run  --test
# Exit codes: 0 ok, 1 a stage (or a test) failed, 2 bad arguments or profile, 130 interrupted.
set -euo pipefail
cd "$(dirname "$0")"

die() { echo "run_all.sh: $*" >&2; exit 2; }   # bad arguments: one line, before any work
profile=demo seed=0 device=auto data_root="" mirror="" mode=run use_venv=1 pinned=0 gpus=1 force=""
[ -n "${COLAB_RELEASE_TAG:-}" ] && use_venv=0   # Colab: keep its CUDA torch, no venv
while [ $# -gt 0 ]; do
  case "$1" in
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;   # --seed=3 is --seed 3
    --profile|--seed|--device|--data-root|--mirror|--gpus)
      { [ $# -ge 2 ] && [ -n "$2" ] && [ "${2#--}" = "$2" ]; } || die "$1 needs a value (see --help)"
      case "$1" in
        --profile) profile="$2" ;; --seed) seed="$2" ;; --device) device="$2" ;; --data-root) data_root="$2" ;; --mirror) mirror="$2" ;;
        --gpus) gpus="$2" ;;
      esac
      shift 2 ;;
    --no-venv) use_venv=0; shift ;;
    --pinned) pinned=1; shift ;;
    --force) force=--force; shift ;;
    --test) mode=test; shift ;;
    --dry-run) mode=dry-run; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
[[ "$seed" =~ ^[0-9]+$ ]] || die "--seed must be a non-negative integer, got '$seed'"
[[ "$gpus" =~ ^[1-9][0-9]*$ ]] || die "--gpus must be a whole number >= 1, got '$gpus'"
[[ "$device" =~ ^(auto|cpu|cuda|cuda:[0-9]+|mps)$ ]] || die "--device must be auto, cpu, cuda, cuda:N or mps, got '$device'"
[[ "$profile" =~ ^[A-Za-z0-9_.-]+$ ]] && [ -f "configs/$profile.yaml" ] \
  || die "no profile '$profile' (known: $(ls configs/*.yaml | xargs -n1 basename | sed 's/\.yaml$//' | paste -sd' '))"

# -- environment: a local venv from pyproject.toml, reinstalled only when the declaration changes.
# The install stamp lives in the project (.proloc/), never in the Python's own prefix (/usr on Colab).
extras=""; [ "$mode" = test ] && extras="[test]"
if [ "$use_venv" = 1 ]; then
  venv="${PROLOC_VENV:-.venv}"
  [ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
  py="$venv/bin/python"
else
  py="${PYTHON:-python3}"
fi
constraints=(); [ "$pinned" = 1 ] && constraints=(-c constraints.txt)
key="$( { cat pyproject.toml; [ "$pinned" = 1 ] && cat constraints.txt; "$py" -c 'import sys; print(sys.executable)'; } \
        | sha256sum | cut -c1-16)"
stamp=".proloc/install-$key${extras:+-test}"
if [ ! -f "$stamp" ]; then
  echo "== installing proloc-ihs$extras into $("$py" -c 'import sys; print(sys.prefix)')"
  # pip is upgraded only inside our own venv: nothing outside the project changes
  [ "$use_venv" = 1 ] && "$py" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$py" -m pip install --quiet --disable-pip-version-check ${constraints[@]+"${constraints[@]}"} -e ".$extras"
  mkdir -p .proloc && touch "$stamp"
fi
export PYTHONUNBUFFERED=1
[ -n "$data_root" ] && export PROLOC_DATA_ROOT="$(realpath -m "$data_root")"

if [ "$mode" = test ]; then
  # lint first (pyproject.toml [tool.ruff]): a finding fails the test command before any test runs
  "$py" -m ruff check .
  # non-notebook code plots off-screen; the notebook runner gives its kernels the inline backend
  MPLBACKEND=Agg "$py" -m pytest
  # the encoder and tokenizer tests again under other admitted transformers (overlay installs)
  exec bash .ci/transformers_versions.sh "$py"
fi
if [ "$mode" = dry-run ]; then
  exec "$py" -m proloc_lib dry-run --profile "$profile" --device "$device"
fi

# -- the study: each notebook reads only what earlier ones wrote; `proloc run` checks the profile
# (every key) and the device first, writes each executed copy only when its notebook succeeded and
# ends a failed stage with that notebook's own one-line error.
gpus_arg=(); [ "$gpus" != 1 ] && gpus_arg=(--gpus "$gpus")   # notebook 03's training ranks
exec "$py" -m proloc_lib run --profile "$profile" --seed "$seed" --device "$device" ${mirror:+--mirror "$mirror"} \
  ${gpus_arg[@]+"${gpus_arg[@]}"} $force
