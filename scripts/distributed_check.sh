#!/usr/bin/env bash
# Data-parallel training end to end on Fashion-MNIST (issue 11's "done when"), for bn, syncbn, gn and mabn:
#
#   1. mpirun -np 2 normkit train --distributed on 9,600 training images (300 steps of 32, checkpoint every 10),
#      interrupted with Ctrl-C (SIGINT to mpirun) after its first checkpoint;
#   2. the same run resumed on 2 ranks with `normkit train --resume DIR` under mpirun, to its end;
#   3. with PYTHON set to a Python that has torch and safetensors (optional): the final checkpoint loaded strictly
#      into ../shared/reference/torch_models.py's ResNet through scripts/check_torch_interop.py --run.
#
#     bash scripts/distributed_check.sh                                  # steps 1–2
#     PYTHON=/path/to/python-with-torch bash scripts/distributed_check.sh   # and step 3
#
# Needs the Fashion-MNIST files (Debian: dataset-fashion-mnist) or --data in NORMKIT_DATA, and Open MPI
# (openmpi-bin, libopenmpi-dev). Exits 0 when every norm trained, resumed and (with PYTHON) loaded; 1 otherwise.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
swift build -c release --product normkit >/dev/null || { echo "FAIL: build" >&2; exit 1; }
normkit="$root/.build/release/normkit"
mpirun_flags="--oversubscribe --bind-to none --mca btl self,vader"
[ "$(id -u)" = 0 ] && mpirun_flags="--allow-run-as-root $mpirun_flags"
data=()
[ -n "${NORMKIT_DATA:-}" ] && data=(--data "$NORMKIT_DATA")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0
for norm in bn syncbn gn mabn; do
  out="$work/$norm"
  mpirun -np 2 $mpirun_flags --timeout 300 "$normkit" train --distributed --threads 1 --norm "$norm" \
    --batch 32 --epochs 1 --train-limit 9600 --test-limit 1000 --checkpoint-every 10 "${data[@]}" --out "$out" \
    >"$work/$norm-1.log" 2>&1 &
  job=$!
  for _ in $(seq 600); do
    [ -f "$out/model.safetensors" ] && break
    kill -0 "$job" 2>/dev/null || break
    sleep 0.1
  done
  kill -INT "$job" 2>/dev/null
  wait "$job"
  status=$?
  if [ "$status" = 0 ] || ! grep -q "interrupted: checkpoint of step" "$work/$norm-1.log"; then
    echo "FAIL $norm: not interrupted after a checkpoint (exit $status)"; tail -5 "$work/$norm-1.log"; failed=1; continue
  fi
  stopped=$(grep -o "interrupted: checkpoint of step [0-9]*" "$work/$norm-1.log" | grep -o "[0-9]*$")
  if ! mpirun -np 2 $mpirun_flags --timeout 300 "$normkit" train --distributed --threads 1 --resume "$out" \
      "${data[@]}" >"$work/$norm-2.log" 2>&1; then
    echo "FAIL $norm: resume"; tail -5 "$work/$norm-2.log"; failed=1; continue
  fi
  line=$(grep "final test error" "$work/$norm-2.log")
  echo "ok   $norm: interrupted at step $stopped of 300, resumed on 2 ranks: $line"
  if [ -n "${PYTHON:-}" ]; then
    if "$PYTHON" scripts/check_torch_interop.py --run "$out" >"$work/$norm-torch.log" 2>&1; then
      echo "ok   $norm: loads strictly into torch_models.ResNet ($(tail -1 "$work/$norm-torch.log"))"
    else
      echo "FAIL $norm: PyTorch reference"; tail -5 "$work/$norm-torch.log"; failed=1
    fi
  fi
done
exit "$failed"
