#!/usr/bin/env bash
# Installs what NormKit needs from Debian on a fresh machine (idempotent; needs root or sudo):
#   libdnnl-dev (oneDNN: the convolutions; without it NormKit builds with its im2col engine only),
#   libopenblas-dev (BLAS for the im2col engine and the classifier), zlib1g-dev (gzip IDX files), pkg-config,
#   dataset-fashion-mnist (the real dataset, in /usr/share/datasets/fashion-mnist), openmpi-bin and
#   libopenmpi-dev (Open MPI: data-parallel training, `mpirun … normkit train --distributed`; without them NormKit
#   builds without NormKitDistributed's transport).
# Package.swift looks for oneDNN and Open MPI when SwiftPM first reads it, and SwiftPM keeps that reading (in .build
# and in its cache of manifests), so a build configured before a package was installed keeps building without it.
# After installing anything, and with --reconfigure, this script clears that reading: the next build sees what is
# installed (and rebuilds from scratch).
set -euo pipefail
reconfigure=0
case "${1:-}" in
  --reconfigure) reconfigure=1 ;;
  "") ;;
  *) echo "usage: bash scripts/setup.sh [--reconfigure]" >&2; exit 2 ;;
esac
packages=(libdnnl-dev libopenblas-dev zlib1g-dev pkg-config dataset-fashion-mnist openmpi-bin libopenmpi-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  reconfigure=1
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ "$reconfigure" -eq 1 ]; then
  [ -d "$root/.build" ] && echo "clearing .build: the next build is configured with what is installed now"
  rm -rf "$root/.build" "${XDG_CACHE_HOME:-$HOME/.cache}/org.swift.swiftpm/manifests"
fi
command -v swift >/dev/null || { echo "swift is not on PATH: install Swift 6.x (swift.org) first" >&2; exit 1; }
