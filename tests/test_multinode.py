"""Multi-node robustness on CPU, with a real 2-process gloo group started from SLURM's variables alone.

- A plain `srun` (no torchrun) is read from SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID and the
  first host of SLURM_JOB_NODELIST: two spawned processes with only those variables train together
  (world size 2), and the SLURM-to-torch mapping holds for every form of the variables; an
  incomplete set is refused naming the variable (tests/bad_cases_launch_env.py: through the CLI).
- Timeouts: training collectives give up after TRAINING_TIMEOUT (at most 30 minutes); waits for
  rank 0's monitor vote and checkpoint writes are barriers on a gloo group with LONG_WAIT_TIMEOUT.
  Every collective of a 2-process run is recorded with its group's timeout (read from the process
  groups' options), and after each checkpoint save and each k-NN vote the next collective on both
  ranks is the long-wait barrier: nothing with the short timeout waits on rank 0's solo work.
- Shuffle-BN across 2 ranks equals the one-process computation with the same permutation: the
  momentum keys of each rank's rows equal those of one process that cuts the permuted global batch
  into the ranks' parts.
"""
from __future__ import annotations

import datetime
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from ssl_bf import distributed as dist_utils
from ssl_bf.devices import resolve_device
from ssl_bf.process_env import (SLURM_PORT_BASE, SLURM_PORT_SPAN, LaunchEnv, ProcessEnvError, launch_env,
                                slurm_hostnames)

from tiny_run import tiny_config

N = 16  # rows per rank in the shuffle-BN check
SLURM_STEP = {"SLURM_STEP_ID": "0", "SLURM_NTASKS": "4", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
              "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "4242"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the SLURM fallback: variables only -----------------------------------------------------------
def test_a_plain_srun_step_maps_slurm_variables_to_the_process_group():
    env = launch_env(SLURM_STEP)
    port = SLURM_PORT_BASE + (4242 * 16 + 0) % SLURM_PORT_SPAN
    assert env == LaunchEnv(rank=3, world_size=4, local_rank=1, master_addr="gpu07", master_port=port, source="slurm")
    assert env.torch_variables() == {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu07",
                                     "MASTER_PORT": str(port)}
    # the step's own node list wins over the job's; MASTER_ADDR / MASTER_PORT given by hand win over both
    assert launch_env({**SLURM_STEP, "SLURM_STEP_NODELIST": "n[3-4]"}).master_addr == "n3"
    given = launch_env({**SLURM_STEP, "MASTER_ADDR": "head", "MASTER_PORT": "12345"})
    assert (given.master_addr, given.master_port) == ("head", 12345)
    # two steps of one job get different default ports
    assert launch_env({**SLURM_STEP, "SLURM_STEP_ID": "1"}).master_port != env.master_port


def test_torchrun_variables_win_over_slurm():
    env = launch_env({**SLURM_STEP, "WORLD_SIZE": "8", "RANK": "5", "LOCAL_RANK": "5", "MASTER_ADDR": "a",
                      "MASTER_PORT": "29400"})
    assert env == LaunchEnv(5, 8, 5, "a", 29400, "torchrun")


@pytest.mark.parametrize("variables", [
    {},  # no launcher
    {**SLURM_STEP, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"},  # a one-task step
    {k: v for k, v in SLURM_STEP.items() if k != "SLURM_STEP_ID"},  # a batch script's (or salloc's) own shell
    {**SLURM_STEP, "SLURM_STEP_ID": "4294967291"},  # Slurm's batch step id
    {"WORLD_SIZE": "1"},  # torchrun --nproc_per_node=1
], ids=["none", "one-task-step", "batch-shell", "batch-step-id", "torchrun-one"])
def test_one_process_cases(variables):
    env = launch_env(variables)
    assert (env.rank, env.world_size, env.local_rank) == (0, 1, 0)


@pytest.mark.parametrize("variables, named", [
    ({k: v for k, v in SLURM_STEP.items() if k != "SLURM_PROCID"}, "SLURM_PROCID"),
    ({k: v for k, v in SLURM_STEP.items() if k != "SLURM_LOCALID"}, "SLURM_LOCALID"),
    ({**SLURM_STEP, "SLURM_PROCID": "4"}, "SLURM_PROCID=4"),
    ({**SLURM_STEP, "SLURM_NTASKS": "four"}, "SLURM_NTASKS"),
    ({k: v for k, v in SLURM_STEP.items() if k != "SLURM_JOB_NODELIST"}, "SLURM_JOB_NODELIST"),
    ({**SLURM_STEP, "SLURM_JOB_NODELIST": "gpu[07-"}, "SLURM_JOB_NODELIST"),
    ({**SLURM_STEP, "MASTER_PORT": "70000"}, "MASTER_PORT"),
    ({"WORLD_SIZE": "2"}, "RANK, MASTER_ADDR and MASTER_PORT"),
    ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1"}, "RANK=2"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0"),
    ({"WORLD_SIZE": "1", "RANK": "1"}, "RANK=1"),
], ids=["no-procid", "no-localid", "procid-too-large", "ntasks-text", "no-nodelist", "bad-nodelist",
        "port-range", "torchrun-incomplete", "rank-too-large", "world-zero", "rank-in-world-one"])
def test_incomplete_or_contradictory_variables_are_refused_naming_them(variables, named):
    with pytest.raises(ProcessEnvError) as err:
        launch_env(variables)
    message = str(err.value)
    assert named in message and "\n" not in message


def test_slurm_host_lists():
    assert slurm_hostnames("n[1-3,07],login1") == ["n1", "n2", "n3", "n07", "login1"]
    assert slurm_hostnames("gpu[007-009]") == ["gpu007", "gpu008", "gpu009"]
    assert slurm_hostnames("rack[1-2]-n[01-02]") == ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]
    for bad in ("", "a,,b", "n[1-", "n]", "n[3-1]", "n[a-b]", "n[]", "n[0-99999999]", "two words"):
        with pytest.raises(ProcessEnvError, match="SLURM_JOB_NODELIST"):
            slurm_hostnames(bad)


def test_a_bare_cuda_device_is_the_slurm_local_rank(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in SLURM_STEP.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert resolve_device("cuda") == torch.device("cuda", 1)  # SLURM_LOCALID, not cuda:0 for every task
    monkeypatch.setenv("SLURM_LOCALID", "6")
    assert resolve_device("cuda") == torch.device("cuda", 2)  # modulo the visible GPUs
    monkeypatch.setenv("SLURM_LOCALID", "-1")
    with pytest.raises(ProcessEnvError, match="SLURM_LOCALID"):
        resolve_device("cuda")


# --- a real 2-process run from SLURM variables only ----------------------------------------------
def _timeout_of(group) -> float:
    """The timeout (s) a process group was created with, from its gloo backend's options."""
    import torch.distributed as dist

    pg = group if group is not None else dist.group.WORLD
    return pg._get_backend(torch.device("cpu")).options._timeout.total_seconds()


def _record_collectives(events: list) -> None:
    """Wrap the torch.distributed calls ssl_bf/distributed.py makes: each call is recorded with the
    timeout of the group it runs on."""
    import torch.distributed as dist

    for name in ("barrier", "all_reduce", "all_gather", "broadcast"):
        original = getattr(dist, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            events.append([_name, _timeout_of(kwargs.get("group"))])
            return _original(*args, **kwargs)

        setattr(dist, name, spy)


def _slurm_worker(rank: int, port: int, out_dir: str, run_dir: str) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR"):
        os.environ.pop(name, None)
    os.environ.update(SLURM_STEP_ID="0", SLURM_NTASKS="2", SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank),
                      SLURM_JOB_NODELIST="localhost", SLURM_JOB_ID="77", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    read = launch_env()  # before the trainer joins the group (which then exports the torch variables)
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    import ssl_bf.train.monitor as monitor_module
    from ssl_bf.train.trainer import Trainer

    cfg = tiny_config(None, f"run.dir={run_dir}", "train.epochs=2", "data.subset=256", "train.batch_size=32",
                      "moco.queue_size=128", "train.checkpoint_every_steps=2", "monitor.knn_every=1",
                      "monitor.bank_subset=64", "monitor.query_subset=32")
    trainer = Trainer(cfg)
    events: list = []
    save, vote = trainer.save_checkpoint, monitor_module.knn_evaluate

    def recorded_save():
        events.append(["save", trainer.step])
        return save()

    def recorded_vote(*args, **kwargs):
        events.append(["vote", None])
        return vote(*args, **kwargs)

    def recorded_ddp_hook(state, bucket):
        events.append(["ddp_all_reduce", _timeout_of(None)])
        return allreduce_hook(state, bucket)

    trainer.save_checkpoint = recorded_save
    monitor_module.knn_evaluate = recorded_vote
    trainer.ddp.register_comm_hook(None, recorded_ddp_hook)
    _record_collectives(events)
    summary = trainer.fit()

    # shuffle-BN on the momentum encoder: this rank's rows of a global batch, one draw of the permutation
    torch.manual_seed(0)
    from ssl_bf.models.registry import build_model

    model = build_model(tiny_config(None, "moco.split_bn_groups=1"), 1, 28).train()
    x_all = _shuffle_inputs()
    mine = x_all[rank * N:(rank + 1) * N]
    torch.manual_seed(7)  # rank 0's permutation is broadcast; the same seed for every draw below
    shuffled, _ = dist_utils.shuffle_batch(mine)
    torch.manual_seed(7)
    with torch.no_grad():
        keys, _ = model.momentum_keys(mine)  # (N, F): shuffle-BN inside
        unshuffled = model.momentum_backbone(mine)  # plain per-rank BN: what shuffle-BN must differ from
    torch.manual_seed(7)
    rows = torch.arange(N, dtype=torch.float32)[:, None] + 100 * rank
    shuffled_rows, restore_rows = dist_utils.shuffle_batch(rows)
    restored_rows = restore_rows(shuffled_rows)

    record = {"rank": rank, "world": trainer.world, "env": read.__dict__, "events": events,
              "summary": summary, "training_timeout": dist_utils.TRAINING_TIMEOUT.total_seconds(),
              "long_timeout": dist_utils.LONG_WAIT_TIMEOUT.total_seconds()}
    torch.save({"keys": keys, "unshuffled": unshuffled, "shuffled": shuffled, "rows": rows,
                "shuffled_rows": shuffled_rows, "restored_rows": restored_rows},
               os.path.join(out_dir, f"tensors{rank}.pt"))
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)
    dist_utils.shut_down(wait=True)


def _shuffle_inputs() -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2 * N, 1, 28, 28, generator=g)
    x[N:] += 2.0  # rank 1's rows differ in distribution: per-rank BN statistics differ visibly
    return x


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("slurm_run")
    mp.spawn(_slurm_worker, args=(_free_port(), str(out), str(out / "run")), nprocs=2, join=True)
    records = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    tensors = [torch.load(out / f"tensors{r}.pt", weights_only=True) for r in range(2)]
    return records, tensors


@pytest.mark.slow
def test_slurm_variables_alone_start_one_two_process_group(slurm_run):
    records, _ = slurm_run
    for r, record in enumerate(records):
        assert record["world"] == 2 and record["rank"] == r
        assert record["env"]["source"] == "slurm" and record["env"]["master_addr"] == "localhost"
        assert record["env"]["rank"] == r and record["env"]["local_rank"] == r
    assert records[0]["summary"]["step"] == 2 * 4  # 256 images / global batch 64, 2 epochs


@pytest.mark.slow
def test_collective_timeouts_short_for_training_long_for_waits_on_rank_0(slurm_run):
    records, _ = slurm_run
    short, long = records[0]["training_timeout"], records[0]["long_timeout"]
    assert short <= datetime.timedelta(minutes=30).total_seconds() < long
    for record in records:
        collectives = [e for e in record["events"] if e[0] not in ("save", "vote")]
        assert collectives and {e[1] for e in collectives} == {short, long}
        assert all(e[1] == short for e in collectives if e[0] != "barrier")  # every training collective
        assert any(e[0] == "ddp_all_reduce" for e in collectives)
        assert all(e[1] == long for e in collectives if e[0] == "barrier")


@pytest.mark.slow
def test_after_every_checkpoint_and_vote_the_next_collective_is_the_long_wait(slurm_run):
    records, _ = slurm_run
    main_events = records[0]["events"]
    solo = [i for i, e in enumerate(main_events) if e[0] in ("save", "vote")]
    assert sum(main_events[i][0] == "save" for i in solo) >= 6  # every 2 steps and each epoch's end
    assert sum(main_events[i][0] == "vote" for i in solo) == 2  # one k-NN vote per epoch
    for i in solo:
        nxt = next(e for e in main_events[i + 1:] if e[0] not in ("save", "vote"))
        assert nxt == ["barrier", records[0]["long_timeout"]], (main_events[i], nxt)
    # rank 1 meets rank 0 at every one of those barriers
    barriers = [[e for e in r["events"] if e[0] == "barrier"] for r in records]
    assert len(barriers[0]) == len(barriers[1]) >= len(solo)


@pytest.mark.slow
def test_shuffle_bn_across_two_ranks_equals_the_one_process_permutation(slurm_run):
    _, tensors = slurm_run
    from ssl_bf.models.registry import build_model

    torch.manual_seed(0)
    model = build_model(tiny_config(None, "moco.split_bn_groups=1"), 1, 28).train()
    x_all = _shuffle_inputs()
    torch.manual_seed(7)
    perm = torch.randperm(2 * N)  # the draw rank 0 made and broadcast
    with torch.no_grad():  # one process: each rank's part of the permuted batch through plain BN
        parts = [model.momentum_backbone(part) for part in x_all[perm].split(N)]
    reference = torch.cat(parts)[torch.argsort(perm)]  # (2N, F), original order
    for r in range(2):
        assert torch.equal(tensors[r]["shuffled"], x_all[perm][r * N:(r + 1) * N])
        assert torch.allclose(tensors[r]["keys"], reference[r * N:(r + 1) * N], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(tensors[r]["unshuffled"], reference[r * N:(r + 1) * N], atol=1e-3)
        assert torch.equal(tensors[r]["restored_rows"], tensors[r]["rows"])
    both = torch.cat([tensors[r]["shuffled_rows"] for r in range(2)]).flatten()
    assert torch.equal(both, torch.cat([tensors[r]["rows"] for r in range(2)]).flatten()[perm])
