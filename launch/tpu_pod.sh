#!/usr/bin/env bash
# CoKe on a Cloud TPU VM pod slice (one process per TPU VM worker, all started at once).
#
#   launch/tpu_pod.sh create                      create the slice
#   launch/tpu_pod.sh copy                        copy this working tree to ~/coke_jax on every worker
#   launch/tpu_pod.sh install                     pip install jax[tpu] and coke_jax on every worker
#   launch/tpu_pod.sh train CONFIG WORKDIR [--config.key=value ...]
#                                                 start main.py on every worker (in the background)
#   launch/tpu_pod.sh logs [WORKER]               stream a worker's log (0: the full log; "all")
#   launch/tpu_pod.sh stop                        SIGTERM on every worker: save, exit 75
#   launch/tpu_pod.sh delete                      delete the slice
#
# WORKDIR must be reachable from every worker: a gs:// path (checkpoints, TensorBoard
# summaries and final_metrics.json go there). Running `train` again resumes from it, also
# on a new slice after a preemption.
#
# Environment: TPU_NAME and ZONE (required); ACCELERATOR (v4-32), RUNTIME
# (tpu-ubuntu2204-base), PROJECT (gcloud's default), SPOT=1 (spot capacity),
# DRY_RUN=1 prints the commands and runs nothing.
set -euo pipefail
source "$(dirname "$0")/common.sh"
repo="$(cd "$(dirname "$0")/.." && pwd)"
[[ $# -ge 1 ]] || usage_error "usage: launch/tpu_pod.sh create|copy|install|train|logs|stop|delete ..."
: "${TPU_NAME:?set TPU_NAME to the name of the TPU slice}"
: "${ZONE:?set ZONE to the zone of the TPU slice, e.g. us-central2-b}"
command="$1"
shift

tpu() {  # gcloud compute tpus tpu-vm SUBCOMMAND ... with the zone and project
  local subcommand="$1"
  shift
  run gcloud compute tpus tpu-vm "$subcommand" "$@" --zone="$ZONE" ${PROJECT:+--project="$PROJECT"}
}

on_workers() {  # WORKERS COMMAND: run a shell command on TPU workers over ssh
  tpu ssh "$TPU_NAME" --worker="$1" --command="$2"
}

case "$command" in
  create)
    capacity=()
    [[ "${SPOT:-0}" == 1 ]] && capacity=(--spot)
    tpu create "$TPU_NAME" --accelerator-type="${ACCELERATOR:-v4-32}" \
      --version="${RUNTIME:-tpu-ubuntu2204-base}" "${capacity[@]}"
    ;;
  copy)
    archive="${TMPDIR:-/tmp}/coke_jax.tar.gz"
    run tar czf "$archive" --exclude=.git -C "$repo" .
    tpu scp "$archive" "$TPU_NAME":coke_jax.tar.gz --worker=all
    on_workers all "rm -rf ~/coke_jax && mkdir ~/coke_jax && tar xzf ~/coke_jax.tar.gz -C ~/coke_jax"
    ;;
  install)
    on_workers all "cd ~/coke_jax && python3 -m pip install -U 'jax[tpu]' && python3 -m pip install -e ."
    ;;
  train)
    [[ $# -ge 2 ]] || usage_error "usage: launch/tpu_pod.sh train CONFIG WORKDIR [main.py flags...]"
    [[ "$2" == gs://* ]] || echo "warning: WORKDIR $2 is not a gs:// path; every worker must see it." >&2
    # jax.distributed: worker 0 coordinates; JAX reads the number of workers and each
    # worker's id from the TPU metadata.
    if dry_run; then
      quote gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone="$ZONE" \
        --format='value(networkEndpoints[0].ipAddress)'
      coordinator="WORKER0_IP"
    else
      coordinator="$(gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone="$ZONE" \
        ${PROJECT:+--project="$PROJECT"} --format='value(networkEndpoints[0].ipAddress)')"
    fi
    train="$(printf '%q ' python3 main.py "--config=$1" "--workdir=$2" "${@:3}" \
      "--coordinator_address=$coordinator:8476")"
    on_workers all "cd ~/coke_jax && (nohup $train > ~/coke_jax.log 2>&1 & echo \$! > ~/coke_jax.pid)"
    ;;
  logs)
    on_workers "${1:-0}" "tail -n +1 -F ~/coke_jax.log"
    ;;
  stop)
    on_workers all "kill -TERM \$(cat ~/coke_jax.pid)"
    ;;
  delete)
    tpu delete "$TPU_NAME" --quiet
    ;;
  *)
    usage_error "unknown command $command; use create, copy, install, train, logs, stop or delete"
    ;;
esac
