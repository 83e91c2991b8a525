#!/usr/bin/env bash
# Build .gpu/ (git-ignored), what the lent GPU machine lacks (DESIGN.md §9), to be carried there with the
# working tree: the py3.12 manylinux wheels of the packages its image does not have (~16 MB) and the
# gettext catalogs of the locale corpus languages (~8 MB as tar.xz). Run here (needs the package index):
#   bash scripts/gpu_carry.sh
# then on the GPU machine (the `device` tool, carry [".gpu"]; benchmarks/gpu_check.py says the rest):
#   bash scripts/gpu_env.sh && python3 benchmarks/gpu_check.py --catalogs /tmp/locale --out "$OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu/wheels
# the versions this checkout's .venv runs (tested together)
pkgs=(jsonargparse==4.53.0 docstring_parser==0.18.0 typeshed_client==2.15.0 jiwer==4.0.0 rapidfuzz==3.14.6
      soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 espeakng-loader==0.2.4 click==8.5.1)
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d .gpu/wheels "${pkgs[@]}"
langs=(de fr es ro it pl sv ru pt nl cs)  # speechkit.corpora.locale.DEFAULT_LANGS
tar -C /usr/share/locale -cJf .gpu/locale.tar.xz $(for l in "${langs[@]}"; do echo "$l/LC_MESSAGES"; done)
du -sh .gpu/wheels .gpu/locale.tar.xz
