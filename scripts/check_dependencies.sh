#!/usr/bin/env bash
# Checks what a user of NormKit gets: builds a throwaway package that depends on this repository by path and
# uses the NormKit and NormKitTraining products, then asserts that SwiftPM resolved no other package (no pins
# in Package.resolved, nothing in .build/checkouts, NormKit alone in the dependency graph). The CLI's
# swift-argument-parser and the DocC plugin are dependencies of this package's own targets only (no product
# reaches them), so a user must never fetch them.
#
#     bash scripts/check_dependencies.sh            # resolve and build (debug) the consumer
#     bash scripts/check_dependencies.sh --resolve  # resolve only (no OpenBLAS/zlib needed)
#
# Exits non-zero, naming what was fetched, when that no longer holds.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build=1
case "${1:-}" in
  --resolve) build=0 ;;
  "") ;;
  *) echo "usage: $0 [--resolve]" >&2; exit 2 ;;
esac

consumer="$(mktemp -d "${TMPDIR:-/tmp}/normkit-consumer.XXXXXX")"
trap 'rm -rf "$consumer"' EXIT
mkdir -p "$consumer/Sources/UsesNormKit" "$consumer/Sources/UsesTraining"
cat > "$consumer/Package.swift" <<EOF
// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "NormKitConsumer",
    dependencies: [.package(name: "NormKit", path: "$root")],
    targets: [
        .target(name: "UsesNormKit", dependencies: [.product(name: "NormKit", package: "NormKit")]),
        .target(name: "UsesTraining", dependencies: [.product(name: "NormKitTraining", package: "NormKit")]),
    ]
)
EOF
cat > "$consumer/Sources/UsesNormKit/UsesNormKit.swift" <<'EOF'
import NormKit

public func makeNorm() throws -> GroupNorm { try GroupNorm(channels: 8, groups: 4) }
EOF
cat > "$consumer/Sources/UsesTraining/UsesTraining.swift" <<'EOF'
import NormKitTraining

public func makeModel() throws -> ResNet {
    var rng = SeededGenerator(seed: 0)
    return try ResNet(depth: 8, normalization: NormalizationSettings(kind: .gn), generator: &rng)
}
EOF

cd "$consumer"
echo "consumer package: $consumer"
swift package resolve
if [ "$build" = 1 ]; then
  swift build
fi

failures=0
if [ -f Package.resolved ] && grep -q '"identity"' Package.resolved; then
  echo "FAIL: Package.resolved pins packages a NormKit user should not need:" >&2
  grep '"identity"' Package.resolved >&2
  failures=$((failures + 1))
fi
if [ -d .build/checkouts ] && [ -n "$(ls -A .build/checkouts)" ]; then
  echo "FAIL: packages were checked out: $(ls .build/checkouts | tr '\n' ' ')" >&2
  failures=$((failures + 1))
fi
graph="$(swift package show-dependencies --format json)"
if ! python3 - "$graph" <<'EOF'
import json, sys
graph = json.loads(sys.argv[1])
deps = graph["dependencies"]
names = [d["name"] for d in deps]
nested = [dd["name"] for d in deps for dd in d["dependencies"]]
if names != ["NormKit"] or nested:
    print(f"FAIL: dependency graph is {names} with nested {nested}, expected NormKit alone", file=sys.stderr)
    sys.exit(1)
EOF
then
  failures=$((failures + 1))
fi

if [ "$failures" -gt 0 ]; then exit 1; fi
echo "OK: depending on NormKit and NormKitTraining resolves NormKit alone (no other package fetched)"
