"""Bad launch environments: torchrun's or SLURM's variables incomplete or contradictory (run by
tests/test_bad_inputs.py; the harness is tests/bad_inputs_harness.py).

Every command that joins a process group (`pretrain`, `embed`, `linear --protocol mocov2|mocov3`,
`evaluate`) reads the variables through `ssl_bf.process_env.launch_env` before it joins or writes:
each case exits 2 with one line naming the variable, and nothing is written. Before, a plain
`srun -n 2 python -m ssl_bf pretrain` started two unrelated one-process runs on cuda:0, and
WORLD_SIZE=2 without RANK ended in torch's traceback.
"""
from __future__ import annotations

from bad_inputs_harness import Case

WATCH = ("{run}", "{tmp}")
NEW_RUN = ["pretrain", "--config", "{tiny}", "run.dir={tmp}/new", "train.epochs=1", "data.subset=256",
           "moco.queue_size=128"]
EMBED = ["embed", "--checkpoint", "{ckpt}", "--split", "test", "--subset", "40", "--no-progress",
         "--out", "{tmp}/out.safetensors"]
MOCOV2 = ["linear", "--protocol", "mocov2", "--checkpoint", "{ckpt}", "--subset", "40", "--epochs", "1",
          "--no-progress"]
TORCH_VARIABLES = {"WORLD_SIZE": None, "RANK": None, "LOCAL_RANK": None, "MASTER_ADDR": None, "MASTER_PORT": None}
# one task of `srun -n 2` as SLURM describes it; each case spoils one variable
SRUN_TASK = {**TORCH_VARIABLES, "SLURM_STEP_ID": "0", "SLURM_NTASKS": "2", "SLURM_PROCID": "1",
             "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "localhost", "SLURM_JOB_ID": "4242"}


def _srun(**changes) -> dict:
    return {**SRUN_TASK, **changes}


def _torchrun(**values) -> dict:
    return {**TORCH_VARIABLES, **values}


def case(id: str, argv: list[str], says: tuple[str, ...], environ: dict) -> Case:
    return Case(id, list(argv), says=says, unchanged=WATCH, environ=environ)


CASES = [
    case("launch-srun-without-procid", NEW_RUN, ("SLURM_PROCID is not set", "srun sets them"),
         _srun(SLURM_PROCID=None)),
    case("launch-srun-without-localid", NEW_RUN, ("SLURM_LOCALID is not set",), _srun(SLURM_LOCALID=None)),
    case("launch-srun-procid-beyond-ntasks", NEW_RUN, ("SLURM_PROCID=2 must be from 0 to 1",),
         _srun(SLURM_PROCID="2")),
    case("launch-srun-ntasks-not-a-number", NEW_RUN, ("SLURM_NTASKS='2x'",), _srun(SLURM_NTASKS="2x")),
    case("launch-srun-without-a-node-list", NEW_RUN, ("MASTER_ADDR nor SLURM_JOB_NODELIST",),
         _srun(SLURM_JOB_NODELIST=None)),
    case("launch-srun-unreadable-node-list", NEW_RUN, ("SLURM_JOB_NODELIST='gpu[07-'", "MASTER_ADDR"),
         _srun(SLURM_JOB_NODELIST="gpu[07-")),
    case("launch-srun-step-node-list-backwards", NEW_RUN, ("SLURM_STEP_NODELIST='n[9-3]'",),
         _srun(SLURM_STEP_NODELIST="n[9-3]")),
    case("launch-srun-master-port-out-of-range", NEW_RUN, ("MASTER_PORT=70000 must be from 1 to 65535",),
         _srun(MASTER_PORT="70000")),
    case("launch-torchrun-without-rank-and-address", NEW_RUN,
         ("WORLD_SIZE=2", "RANK, MASTER_ADDR and MASTER_PORT are not set"), _torchrun(WORLD_SIZE="2")),
    case("launch-torchrun-rank-beyond-world", NEW_RUN, ("RANK=3 must be from 0 to 1",),
         _torchrun(WORLD_SIZE="2", RANK="3", MASTER_ADDR="127.0.0.1", MASTER_PORT="29500")),
    case("launch-torchrun-world-not-a-number", NEW_RUN, ("WORLD_SIZE='two'",), _torchrun(WORLD_SIZE="two")),
    case("launch-torchrun-negative-local-rank", NEW_RUN, ("LOCAL_RANK=-1",),
         _torchrun(WORLD_SIZE="1", LOCAL_RANK="-1")),
    case("launch-embed-srun-without-procid", EMBED, ("SLURM_PROCID is not set",), _srun(SLURM_PROCID=None)),
    case("launch-linear-mocov2-torchrun-without-rank", MOCOV2, ("RANK, MASTER_ADDR and MASTER_PORT",),
         _torchrun(WORLD_SIZE="2")),
    case("launch-evaluate-srun-unreadable-node-list", ["evaluate", "{run}", "--no-progress"],
         ("SLURM_JOB_NODELIST",), _srun(SLURM_JOB_NODELIST="n[1-2")),
]
