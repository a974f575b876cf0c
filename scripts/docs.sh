#!/usr/bin/env bash
# Builds the DocC documentation with warnings as errors: a broken symbol link, or a parameter that is
# undocumented or documented under a name the function does not have, fails the build (CI runs this).
#
#     bash scripts/docs.sh [OUTPUT_DIR]     # default: .build/docs/NormKit.doccarchive
#
# One combined archive holds the two libraries (NormKit, NormKitTraining; catalogs in Sources/*/*.docc) and the
# CLI's NormKitExperiments target, so that doc comments can link across modules: write ``/NormKit/Tensor``
# (leading slash, module first) in NormKitTraining to link to NormKit's `Tensor`.
# Preview one library locally with: swift package --disable-sandbox preview-documentation --target NormKit
#
# swift-docc-plugin is a dependency of this package only (no product uses it), so NormKit's users never fetch
# it; scripts/check_dependencies.sh checks that.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.build/docs/NormKit.doccarchive}"
mkdir -p "$(dirname "$out")"
out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"

swift package --allow-writing-to-directory "$(dirname "$out")" generate-documentation \
  --target NormKit --target NormKitTraining --target NormKitExperiments --target NormKitDistributed \
  --enable-experimental-combined-documentation \
  --warnings-as-errors \
  --output-path "$out"
test -d "$out/data/documentation/normkit" || { echo "docs: $out has no NormKit pages" >&2; exit 1; }
test -d "$out/data/documentation/normkittraining" || { echo "docs: $out has no NormKitTraining pages" >&2; exit 1; }
echo "docs: built $out without warnings"
