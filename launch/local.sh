#!/usr/bin/env bash
# CoKe on one machine with several GPUs.
#
#   launch/local.sh CONFIG WORKDIR [--config.key=value ...]
#       One process drives every GPU of the machine (the usual way).
#   PROCESSES=8 launch/local.sh CONFIG WORKDIR [...]
#       One process per GPU, joined by jax.distributed on 127.0.0.1: what a multi-node
#       job does, on one machine. A SIGTERM to this script reaches every process.
#
# Environment: PROCESSES (1), PORT (12355: the coordinator's port when PROCESSES > 1),
# PYTHON (python3), DRY_RUN=1 prints the commands and runs nothing.
# Exit status: main.py's (75: preempted, a checkpoint was written; run again to resume).
set -euo pipefail
source "$(dirname "$0")/common.sh"
[[ $# -ge 2 ]] || usage_error "usage: launch/local.sh CONFIG WORKDIR [main.py flags...]"
cd "$(dirname "$0")/.."
train=("${PYTHON:-python3}" main.py "--config=$1" "--workdir=$2" "${@:3}")
processes="${PROCESSES:-1}"

if [[ "$processes" == 1 ]]; then
  run "${train[@]}"
  exit
fi

pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM INT
for ((i = 0; i < processes; i++)); do
  process=(env CUDA_VISIBLE_DEVICES="$i" "${train[@]}"
           --coordinator_address="127.0.0.1:${PORT:-12355}" --num_processes="$processes"
           --process_id="$i")
  if dry_run; then
    quote "${process[@]}"
  else
    "${process[@]}" &
    pids+=($!)
  fi
done
status=0
for pid in "${pids[@]}"; do
  while true; do
    code=0
    wait "$pid" || code=$?
    # A trapped signal interrupts `wait` (status > 128) while the process still runs.
    (( code > 128 )) && kill -0 "$pid" 2>/dev/null || break
  done
  (( code > status )) && status=$code
done
exit "$status"
