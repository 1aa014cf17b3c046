#!/bin/bash
# One batchgen job over 4 Slurm array tasks.
#
# Slurm gives each array task SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT; batchgen
# reads them (and SLURM_ARRAY_TASK_MIN, so --array=1-4 works too) and runs shard
# ID/COUNT: its own slice of the matrix in its own ledger on the shared filesystem.
# A task that is requeued (preempted, node failure) resumes its shard: the lease of
# the dead run is taken over after 30 s and nothing already at the service is paid
# again.
#
#   export COBABA_API_KEY=sk-...        # sbatch passes your environment to the job
#   sbatch examples/deploy/slurm-array.sh
#   # when every array task has finished:
#   batchgen merge jobs/dataset.yaml
#
#SBATCH --job-name=batchgen-dataset
#SBATCH --array=0-3
#SBATCH --cpus-per-task=1
#SBATCH --mem=512M
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --output=logs/batchgen-%A_%a.out

set -euo pipefail
: "${COBABA_API_KEY:?set COBABA_API_KEY before sbatch}"
# Exit code 4 means another run holds this shard's ledger: it is not an error to retry.
exec batchgen run --quiet examples/dataset.yaml
