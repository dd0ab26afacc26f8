#!/bin/bash

# Parameters
#SBATCH --account=acc
#SBATCH --array=0-3%2
#SBATCH --constraint=a100
#SBATCH --cpus-per-task=10
#SBATCH --dependency=aftercorr:1234
#SBATCH --error=/golden/submitit/%A_%a_0_log.err
#SBATCH --exclusive
#SBATCH --gpus-per-node=8
#SBATCH --job-name=ssl-bf-pretrain
#SBATCH --kill-on-invalid-dep=yes
#SBATCH --mail-type=END
#SBATCH --mem=491520M
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --open-mode=append
#SBATCH --output=/golden/submitit/%A_%a_0_log.out
#SBATCH --partition=gpu
#SBATCH --qos=high
#SBATCH --signal=USR2@180
#SBATCH --time=4320

# setup
module load cuda

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output /golden/submitit/%A_%a_%t_log.out --error /golden/submitit/%A_%a_%t_log.err {python} -u -m submitit.core._submit /golden/submitit
