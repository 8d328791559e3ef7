#!/usr/bin/env bash
# Run a cl_jax experiment on every host of a Cloud TPU VM pod slice.
#
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.x.y=v ...]
#   e.g. REPO_URL=https://github.com/ORG/cl_jax.git launch/tpu_pod.sh my-v4-32 us-central2-b \
#        configs/simclr_randbit.py:cifar10 gs://my-bucket/runs/randbit10 \
#        --config.data.random_bits=10 --config.data.data_dir=gs://my-bucket/tfds
#
# WORKDIR (checkpoints, eval.json, curves, TensorBoard) and data.data_dir (a tfds folder prepared
# with `tfds build NAME --data_dir=gs://my-bucket/tfds`) must be visible to every host: use a GCS
# bucket. Each host installs cl_jax with the [tpu] extra (jax[tpu] + tensorflow-cpu; add
# `-c constraints.txt` via PIP_CONSTRAINT=constraints.txt to reproduce the tested versions exactly)
# and runs the same command with --distributed: jax.distributed.initialize() finds the other hosts,
# each process reads only the rows of each global batch its chips hold, and train.batch_size stays
# the GLOBAL batch.
#
# MODULE=cl_jax.analysis.sweep runs a sweep instead (add --sweep=configs/sweeps/NAME.json); it
# is set up, preempted and resumed like cl_jax.main.
#
# Preemption: a TPU VM that is preempted gets SIGTERM; every host saves the current step and exits
# with status 75. Rerun this script (same WORKDIR) to resume; a finished run exits 0 and leaves
# WORKDIR/eval.json.
set -euo pipefail
if [ $# -lt 4 ]; then sed -n '2,8p' "$0"; exit 2; fi
TPU_NAME=$1 ZONE=$2 CONFIG=$3 WORKDIR=$4
shift 4
case "$WORKDIR" in
  gs://*) ;;
  *) echo "WORKDIR=$WORKDIR is not a gs:// bucket: the hosts of a pod do not share a disk." >&2
     exit 2 ;;
esac
REPO_URL=${REPO_URL:-"$(git config --get remote.origin.url || true)"}
if [ -z "$REPO_URL" ]; then echo "Set REPO_URL to this repository's git URL." >&2; exit 2; fi
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
  set -e
  [ -d cl_jax ] || git clone -q $REPO_URL cl_jax
  cd cl_jax && git pull -q --ff-only
  [ -d .venv ] || python3 -m venv .venv
  .venv/bin/pip install -q -e '.[tpu]'
  .venv/bin/python -m ${MODULE:-cl_jax.main} --distributed --config=$CONFIG --workdir=$WORKDIR $*
"
