#!/usr/bin/env bash
# Runs training on every worker of a Cloud TPU pod slice (jax.distributed.initialize() finds the pod itself).
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh --config configs/coco_stuff171_zs3.py \
#       --config.data_dir=/mnt/shared/tensorflow_datasets --workdir /mnt/shared/runs/coco
# The workdir and data_dir must be a filesystem all workers mount (NFS/Filestore); gs:// paths are not
# supported yet.
# Installs the repository on each worker first (REPO_URL, default: this checkout's origin).
# Set DRY_RUN=1 to print the gcloud command without running it.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
repo=${REPO_URL:-$(git config --get remote.origin.url || echo "<your repository URL>")}
args=$(printf '%q ' "$@")  # each argument quoted for the remote shell: spaces and quotes survive
remote="set -e; if [ ! -d zegot_jax_repo ]; then git clone $(printf '%q' "$repo") zegot_jax_repo; fi; \
cd zegot_jax_repo; pip install -q -e . 'jax[tpu]' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html; \
python3 -m zegot_jax.train $args"
cmd=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "$remote")
printf '%q ' "${cmd[@]}"; echo
if [ "${DRY_RUN:-0}" != 1 ]; then "${cmd[@]}"; fi
