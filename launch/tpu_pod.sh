#!/usr/bin/env bash
# Run a cl_jax experiment on every host of a Cloud TPU VM pod slice.
#
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.x.y=v ...]
#   e.g. launch/tpu_pod.sh my-v4-32 us-central2-b configs/simclr_randbit.py:cifar10 \
#        gs://my-bucket/runs/randbit10 --config.data.random_bits=10 --config.data.data_dir=gs://my-bucket/tfds
#
# WORKDIR and data.data_dir must be shared by all hosts (a GCS bucket). Each host runs the same
# command; --distributed calls jax.distributed.initialize(), each process reads its slice of every
# global batch, and train.batch_size stays the GLOBAL batch. Rerunning resumes from the latest
# checkpoint in WORKDIR (e.g. after preemption).
set -euo pipefail
TPU_NAME=$1 ZONE=$2 CONFIG=$3 WORKDIR=$4
shift 4
REPO_URL=${REPO_URL:-"$(git config --get remote.origin.url)"}
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
  set -e
  [ -d cl_jax ] || git clone $REPO_URL cl_jax
  cd cl_jax && git pull --ff-only
  python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]==0.10.2'
  .venv/bin/python -m cl_jax.main --distributed --config=$CONFIG --workdir=$WORKDIR $*
"
