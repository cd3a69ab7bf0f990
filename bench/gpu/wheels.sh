#!/usr/bin/env bash
# Download (here, where the package index is reachable) the wheels that a lent GPU machine lacks into .whl/
# (git-ignored). Its image holds Python 3.12 with torch, transformers 5.17 and huggingface_hub 1.33 but
# no diffusers or pydantic; the engine needs the versions below. See bench/gpu/check.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${PYTHON:-.venv/bin/python}
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl \
  diffusers==0.42.1 transformers==5.24.0 importlib_metadata==10.2.0 lazy-importer==0.1.0 \
  pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  typing_extensions==4.16.0 regex==2026.11.19
ls .whl
du -sh .whl
