#!/usr/bin/env bash
# Builds NormKit's libFuzzer targets (Fuzz/, with -sanitize=fuzzer,address on every module, so the parsers are
# coverage-instrumented) and runs each one on its seed corpus. See docs/FUZZING.md.
#
#   scripts/fuzz.sh --runs 1000000                 # every target, 1,000,000 inputs each, one after the other
#   scripts/fuzz.sh --seconds 30 fuzz-idx          # one target for 30 s
#   scripts/fuzz.sh --seconds 30 --merge           # also merge new coverage into the committed corpus
#   scripts/fuzz.sh --build-only                   # only build the targets
#   scripts/fuzz.sh --make-corpus                  # rewrite the seed corpora (Fuzz/Corpus/) from NormKit's writers
#
# Options: --runs N | --seconds S (default --seconds 30), --rss-limit-mb MB (default 2048), --timeout S (per
# input, default 10), --max-len BYTES (default 8192), --scratch DIR (new corpus entries, crash files and logs;
# default a new directory under ${TMPDIR:-/tmp}), --debug (debug build; default release), --merge, --build-only,
# --make-corpus. Target names after the options select targets (default: all).
#
# Exit status: 0 when every target ran clean; 1 when any target found a crash, a leak, a timeout (hang), an
# out-of-memory input or otherwise failed (its artifact is in the scratch directory); 2 for a usage error.
# New corpus entries always go to the scratch directory; the committed corpus (Fuzz/Corpus/<target>/) changes
# only with --merge (libFuzzer -merge=1: only inputs that add coverage are copied in).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

targets_all=(fuzz-safetensors fuzz-idx fuzz-gzip fuzz-checkpoint-config fuzz-sweep-plan fuzz-run-records
  fuzz-training-state)
mode=(-max_total_time=30)
rss=2048
timeout=10
max_len=8192
scratch=""
config=release
merge=0
build_only=0
make_corpus=0
targets=()

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --runs) mode=(-runs="${2:?}"); shift 2 ;;
    --seconds) mode=(-max_total_time="${2:?}"); shift 2 ;;
    --rss-limit-mb) rss="${2:?}"; shift 2 ;;
    --timeout) timeout="${2:?}"; shift 2 ;;
    --max-len) max_len="${2:?}"; shift 2 ;;
    --scratch) scratch="${2:?}"; shift 2 ;;
    --debug) config=debug; shift ;;
    --merge) merge=1; shift ;;
    --build-only) build_only=1; shift ;;
    --make-corpus) make_corpus=1; shift ;;
    -h|--help) usage ;;
    fuzz-*) targets+=("$1"); shift ;;
    *) echo "fuzz.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
[[ ${#targets[@]} -gt 0 ]] || targets=("${targets_all[@]}")
for t in "${targets[@]}"; do
  [[ " ${targets_all[*]} " == *" $t "* ]] || { echo "fuzz.sh: unknown target '$t' (known: ${targets_all[*]})" >&2; exit 2; }
done

if [[ $make_corpus == 1 ]]; then
  # An ordinary (unsanitized) build in its own scratch path: the seed writer has a main and must not get
  # -sanitize=fuzzer.
  (cd Fuzz && swift build --scratch-path .build-corpus --product fuzz-make-corpus)
  (cd Fuzz && .build-corpus/debug/fuzz-make-corpus Corpus)
  exit 0
fi

# --sanitize=fuzzer makes SwiftPM link without its `main` renaming (libFuzzer supplies main);
# -Xswiftc -sanitize=fuzzer,address then instruments every Swift module with coverage and ASan. (Two separate
# --sanitize options would not do: the driver keeps only the last -sanitize= flag.)
build_flags=(-c "$config" --sanitize=fuzzer -Xswiftc -sanitize=fuzzer,address)
for t in "${targets[@]}"; do
  echo "== building $t ($config)"
  (cd Fuzz && swift build "${build_flags[@]}" --product "$t" 2>&1 | grep -v "ld.gold: warning: Cannot export local symbol") \
    || { echo "fuzz.sh: build of $t failed" >&2; exit 1; }
done
bin="$root/Fuzz/.build/$config"
[[ $build_only == 1 ]] && exit 0

[[ -n "$scratch" ]] || scratch=$(mktemp -d "${TMPDIR:-/tmp}/normkit-fuzz-run.XXXXXX")
mkdir -p "$scratch"
echo "scratch directory (new corpus entries, artifacts, logs): $scratch"

# Leak detection on (libFuzzer reports a leak as a failure); the Swift runtime's own crash backtracer off, so
# that libFuzzer's handler reports the crash and writes the input.
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:handle_abort=1:allocator_may_return_null=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export SWIFT_BACKTRACE="enable=no"

failed=()
for t in "${targets[@]}"; do
  corpus="$root/Fuzz/Corpus/$t"
  new="$scratch/$t/corpus"
  artifacts="$scratch/$t/artifacts/"
  log="$scratch/$t/fuzz.log"
  mkdir -p "$new" "$artifacts"
  dict=()
  [[ -f "$root/Fuzz/Dictionaries/$t.dict" ]] && dict=(-dict="$root/Fuzz/Dictionaries/$t.dict")
  # One fuzzing process per target, in-process (libFuzzer's default: one worker, one job). Passing -jobs=1
  # -workers=1 would instead fork a child that logs to ./fuzz-0.log; targets run one after the other.
  cmd=("$bin/$t" "${mode[@]}" -rss_limit_mb="$rss" -timeout="$timeout" -max_len="$max_len" -detect_leaks=1
       -print_final_stats=1 -artifact_prefix="$artifacts" "${dict[@]}" "$new" "$corpus")
  echo "== $t: ${cmd[*]}"
  start=$(date +%s)
  status=0
  "${cmd[@]}" >"$log" 2>&1 || status=$?
  wall=$(( $(date +%s) - start ))
  final=$(grep -E '^#[0-9]+.*(DONE|pulse|NEW|REDUCE|INITED)' "$log" | tail -1 || true)
  echo "   exit $status, ${wall} s wall; last status line: ${final:-none}"
  grep -E '^stat::(number_of_executed_units|peak_rss_mb|new_units_added)' "$log" | sed 's/^/   /' || true
  echo "   corpus: $(ls "$corpus" | wc -l) committed + $(ls "$new" | wc -l) new entries; log: $log"
  if [[ $status != 0 ]]; then
    echo "   FAILED: $(grep -E 'ERROR: |SUMMARY: |fuzz property violated' "$log" | head -3 | tr '\n' ' ')" >&2
    ls "$artifacts" | sed "s|^|   artifact: $artifacts|" >&2
    failed+=("$t")
    continue
  fi
  if [[ $merge == 1 ]]; then
    "$bin/$t" -merge=1 -rss_limit_mb="$rss" -timeout="$timeout" -max_len="$max_len" "$corpus" "$new" \
      >"$scratch/$t/merge.log" 2>&1 || { echo "fuzz.sh: merge for $t failed" >&2; failed+=("$t"); }
    echo "   merged: the committed corpus now has $(ls "$corpus" | wc -l) entries"
  fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzz.sh: FAILED: ${failed[*]} (artifacts and logs in $scratch)" >&2
  exit 1
fi
echo "fuzz.sh: all targets clean (${targets[*]})"
