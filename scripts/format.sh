#!/usr/bin/env bash
# The code style: swift-format (it ships with the toolchain) with the repository's .swift-format configuration.
#
#     bash scripts/format.sh           # reformat every Swift file in place
#     bash scripts/format.sh --check   # report what differs and fail (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
paths=(Sources Tests Benchmarks/Sources Fuzz/Sources)
if [ "${1:-}" = "--check" ]; then
  swift format lint --strict --recursive "${paths[@]}" || {
    echo "swift-format: the files above differ from the style; run: bash scripts/format.sh" >&2
    exit 1
  }
else
  swift format format --in-place --recursive "${paths[@]}"
fi
