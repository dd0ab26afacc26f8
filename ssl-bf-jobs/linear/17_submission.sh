#!/bin/bash

# Parameters
#SBATCH --cpus-per-task=1
#SBATCH --error=/work/wt14/ssl-bf-jobs/linear/%j_0_log.err
#SBATCH --job-name=ssl-bf-linear
#SBATCH --mem=2048M
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --open-mode=append
#SBATCH --output=/work/wt14/ssl-bf-jobs/linear/%j_0_log.out
#SBATCH --partition=debug
#SBATCH --signal=USR2@40
#SBATCH --time=10

# setup
export OMP_NUM_THREADS=1

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output /work/wt14/ssl-bf-jobs/linear/%j_%t_log.out --error /work/wt14/ssl-bf-jobs/linear/%j_%t_log.err /work/wt14/.venv/bin/python -u -m submitit.core._submit /work/wt14/ssl-bf-jobs/linear
