#!/usr/bin/env bash
# The encoder and tokenizer tests (tests/features/test_encoders.py) under other transformers releases that
# pyproject.toml admits: the lowest (4.40.0) and 5.17.0 (one of 5.10-5.19, whose T5 tokenizer
# rejects an empty sentencepiece normaliser table). Each runs from an overlay install: the
# release and the tokenizers / huggingface_hub it needs, `pip install --no-deps --target`
# into .proloc/overlays/ (made once, reused), put first on PYTHONPATH; the environment itself is
# never changed. Called by `run_all.sh --test`;  usage: bash .ci/transformers_versions.sh [PYTHON]
# PROLOC_TF_OVERLAYS=0 skips it (e.g. a machine without a package index).
set -euo pipefail
cd "$(dirname "$0")/.."
py="${1:-python3}"
[ "${PROLOC_TF_OVERLAYS:-1}" = 0 ] && { echo "== transformers overlays skipped (PROLOC_TF_OVERLAYS=0)"; exit 0; }

# version|exact pins installed into the overlay (all with --no-deps: everything else is the env's)
overlays=(
  "4.40.0|transformers==4.40.0 tokenizers==0.19.1 huggingface-hub==0.36.0"
  "5.17.0|transformers==5.17.0 tokenizers==0.23.3 huggingface-hub==1.33.0 httpx==0.28.1 httpcore==1.0.9"
)
for spec in "${overlays[@]}"; do
  version="${spec%%|*}" pins="${spec#*|}"
  dir=".proloc/overlays/transformers-$version"
  if [ ! -f "$dir/.complete" ]; then
    echo "== overlay: installing $pins into $dir"
    rm -rf "$dir"
    # shellcheck disable=SC2086  # the pins are separate words
    "$py" -m pip install --quiet --disable-pip-version-check --no-deps --target "$dir" $pins \
      || { echo "transformers_versions.sh: could not install the overlay for transformers $version" >&2; exit 1; }
    touch "$dir/.complete"
  fi
  got="$(PYTHONPATH="$dir:$PWD" "$py" -c 'import transformers; print(transformers.__version__)')"
  [ "$got" = "$version" ] || { echo "transformers_versions.sh: overlay gave transformers $got, not $version" >&2; exit 1; }
  echo "== tests/features/test_encoders.py under transformers $version (overlay)"
  PYTHONPATH="$dir:$PWD" MPLBACKEND=Agg "$py" -m pytest -q -p no:cacheprovider tests/features/test_encoders.py
done
