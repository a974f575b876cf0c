#!/usr/bin/env bash
# Builds normkit-mpi-check (release) and runs NormKitDistributed's MPI self-test under mpirun:
#
#   1. alone, without mpirun: MPI runs it as a one-process singleton, and it must say it was not launched by mpirun;
#   2. -np 2: every collective against its closed form, 3M-float buffers;
#   3. -np 3 with NORMKIT_MPI_MAX_CHUNK=1000000: the same, large buffers split into several MPI calls;
#   4. -np 3 --fail-rank 1, with rank 1 dying by exit(3), SIGKILL and MPI_Abort while the others wait in
#      MPI_Allreduce: the job must end non-zero before the time limit, each survivor printing its termination notice
#      (after MPI_Abort Open MPI kills the survivors itself and their notices may be lost: not required there)
#      (no survivor may get an error code or complete the collective: that would mean a change in Open MPI's
#      behaviour, documented in MPICommunicator).
#
#     bash scripts/mpi_check.sh              # build, then run
#     bash scripts/mpi_check.sh --no-build   # run the binary already in .build/release
#
# mpirun's flags come from the binary (`--mpirun-arguments`, i.e. MPICommunicator.mpirunArguments()): as root,
# --allow-run-as-root; always --oversubscribe --bind-to none --mca btl self,vader. Every mpirun has mpirun's own
# --timeout and runs under timeout(1), so nothing here can hang.
#
# Exits 0 when everything held, 1 when something did not, 77 when NormKit was built without Open MPI or mpirun is
# missing (skipped).
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

build=1
case "${1:-}" in
  --no-build) build=0 ;;
  "") ;;
  *) echo "usage: $0 [--no-build]" >&2; exit 2 ;;
esac

limit=120            # seconds per run, outer limit (timeout(1), then SIGKILL 10 s later)
mpirun_limit=90      # mpirun's own --timeout: it aborts the job with a message first
binary=.build/release/normkit-mpi-check

if [ "$build" = 1 ]; then
  swift build -c release --product normkit-mpi-check || { echo "FAIL: build" >&2; exit 1; }
fi
[ -x "$binary" ] || { echo "FAIL: $binary not found (build it, or drop --no-build)" >&2; exit 1; }

# 1. Alone: also tells whether this build has MPI at all.
output="$(timeout -k 10 "$limit" "$binary" 2>&1)"
status=$?
if [ "$status" = 77 ]; then
  echo "SKIP: $output" >&2
  exit 77
fi
if ! command -v mpirun > /dev/null; then
  echo "SKIP: mpirun not found: install the Debian package openmpi-bin" >&2
  exit 77
fi

failures=0
pass() { echo "ok    $*"; }
fail() { echo "FAIL  $*" >&2; failures=$((failures + 1)); }

if [ "$status" = 0 ] && grep -q "launched by mpirun: no (singleton)" <<< "$output"; then
  pass "singleton (no mpirun): $(tail -n 1 <<< "$output")"
else
  printf '%s\n' "$output" >&2
  fail "singleton run (status $status)"
fi

mapfile -t flags < <("$binary" --mpirun-arguments)
echo "mpirun flags: ${flags[*]}"

# mpirun with the flags and both time limits; prints its output, returns its status.
run() {
  timeout -k 10 "$limit" mpirun --timeout "$mpirun_limit" "${flags[@]}" "$@" 2>&1
}

# 2, 3. Every check.
for setup in "2" "3 NORMKIT_MPI_MAX_CHUNK=1000000"; do
  read -r ranks environment <<< "$setup"
  extra=()
  if [ -n "$environment" ]; then extra=(-x "$environment"); fi
  echo "== mpirun -np $ranks ${environment:+-x $environment }normkit-mpi-check"
  start=$SECONDS
  run -np "$ranks" "${extra[@]}" "$binary"
  status=$?
  if [ "$status" = 0 ]; then
    pass "$ranks ranks${environment:+ ($environment)}: every check passed ($((SECONDS - start)) s)"
  else
    fail "$ranks ranks${environment:+ ($environment)}: status $status"
  fi
done

# 4. A rank that dies: the job ends, with a notice from each survivor, and no survivor hangs or carries on.
for mode in exit kill abort; do
  echo "== mpirun -np 3 normkit-mpi-check --fail-rank 1 --fail-mode $mode"
  start=$SECONDS
  output="$(run -np 3 "$binary" --fail-rank 1 --fail-mode "$mode")"
  status=$?
  elapsed=$((SECONDS - start))
  printf '%s\n' "$output"
  notices=$(grep -c "was terminated by SIGTERM" <<< "$output")
  if [ "$status" = 0 ]; then
    fail "fail-rank ($mode): the job exited 0"
  elif [ "$status" = 124 ] || [ "$elapsed" -ge "$mpirun_limit" ] \
      || grep -q "time limit for job execution" <<< "$output"; then
    fail "fail-rank ($mode): the job hung until the time limit (status $status)"
  elif grep -q "MPI_Allreduce threw\|MPI_Allreduce completed" <<< "$output"; then
    fail "fail-rank ($mode): a survivor did not end as documented (status $status)"
  elif [ "$mode" != abort ] && [ "$notices" != 2 ]; then
    fail "fail-rank ($mode): $notices termination notices, 2 expected (status $status)"
  elif [ "$mode" = abort ] && [ "$notices" -gt 2 ]; then
    # After MPI_Abort Open MPI kills the others itself and says their output may or may not appear (a CI run saw
    # 1 of 2 notices): the job ending, non-zero and in time, is what is required.
    fail "fail-rank ($mode): $notices termination notices, at most 2 expected (status $status)"
  else
    pass "fail-rank ($mode): mpirun ended the job in ${elapsed} s with status $status, $notices survivor notice(s)"
  fi
done

if [ "$failures" = 0 ]; then
  echo "mpi_check: all passed"
  exit 0
fi
echo "mpi_check: $failures FAILED" >&2
exit 1
