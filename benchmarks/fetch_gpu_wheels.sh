#!/usr/bin/env sh
# Fetch the wheels benchmarks/gpu_wheels.txt names into benchmarks/wheels/ (git-ignored), built for
# the GPU machine: CPython 3.12 on manylinux x86-64. --no-deps: the list names every wheel itself,
# and `python benchmarks/gpu_check.py --dry-run` checks that their requirements are covered.
# Runs on any machine with pip and access to PyPI.
set -eu
cd "$(dirname "$0")/.."
python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    --dest benchmarks/wheels --requirement benchmarks/gpu_wheels.txt
ls -l benchmarks/wheels
