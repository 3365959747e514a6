#!/usr/bin/env bash
# Starts N training processes on this machine, wired together with jax.distributed (CPU or GPUs).
#   launch/local.sh 2 --config configs/textures_zs3.py:runlocal=True --workdir /tmp/two_procs
# Each process gets JAX_PROCESS_ID; on a GPU machine each sees one GPU (CUDA_VISIBLE_DEVICES).
# Set DRY_RUN=1 to print the commands without running them.
set -euo pipefail
n=${1:?usage: launch/local.sh NUM_PROCESSES train flags...}
shift
port=${PORT:-$((20000 + RANDOM % 20000))}
python=${PYTHON:-python3}
gpus=$(command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L | wc -l || echo 0)
pids=()
for ((i = 0; i < n; i++)); do
  cmd=(env "JAX_COORDINATOR_ADDRESS=localhost:$port" "JAX_NUM_PROCESSES=$n" "JAX_PROCESS_ID=$i")
  if [ "$gpus" -ge "$n" ]; then cmd+=("CUDA_VISIBLE_DEVICES=$i"); fi
  cmd+=("$python" -m zegot_jax.train "$@")  # every argument passed on as it was given, spaces included
  echo "[process $i] $(printf '%q ' "${cmd[@]}")"
  if [ "${DRY_RUN:-0}" != 1 ]; then
    "${cmd[@]}" > >(sed "s/^/[process $i] /") 2>&1 &
    pids+=($!)
  fi
done
status=0
for pid in "${pids[@]:-}"; do
  [ -n "$pid" ] && { wait "$pid" || status=$?; }
done
exit $status
