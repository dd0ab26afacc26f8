"""Real 2-process DDP over gloo on CPU: parity with one process on the same global batch."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from ssl_bf import distributed as dist_utils
from ssl_bf.models.registry import build_model

from tiny_run import tiny_config

N = 32  # rows per rank
OVERRIDES = ("moco.queue_size=256", "moco.shuffle_keys=false", "batchformer.dropout=0", "train.batch_size=32")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inputs():
    g = torch.Generator().manual_seed(123)
    return torch.randn(2 * N, 1, 28, 28, generator=g), torch.randn(2 * N, 1, 28, 28, generator=g)


def _grads(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank: int, port: int, out_dir: str, bf: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="env://")
    torch.manual_seed(0)
    cfg = tiny_config(None, *OVERRIDES, "moco.split_bn_groups=1", *_bf_overrides(bf))
    model = build_model(cfg, 1, 28).train()
    ddp = DistributedDataParallel(model)
    x1, x2 = _inputs()
    mine = slice(rank * N, (rank + 1) * N)
    out = ddp(x1[mine], x2[mine], momentum=0.9)
    out["loss"].backward()
    # collective helpers: shuffle across ranks is invertible, global BF equals BF on all rows
    rows = torch.arange(N, dtype=torch.float32).unsqueeze(1) + 100 * rank
    shuffled, restore = dist_utils.shuffle_batch(rows)
    feats = torch.randn(2 * N, 16, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(1)
    from ssl_bf.models.batchformer import BatchFormer
    bf_module = BatchFormer(16, dropout=0.0).train()
    global_out = bf_module.transform(feats[mine], dist_utils.gather_rows_with_grad)
    local_out = bf_module.transform(feats[mine])
    torch.save({"grads": _grads(model), "queue": model.queue.clone(),
                "feature_queue": getattr(model, "feature_queue", model.queue).clone(), "restored": restore(shuffled), "rows": rows,
                "shuffled": shuffled, "global": global_out.detach(), "local": local_out.detach()},
               os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


# BatchFormerV2 between the blocks of a real ViT-tiny, global scope at both insertions; the key side
# passes it too (same_batch), so the no-gradient gather of the key stream is covered as well
VIT_BLOCKS = ("backbone.name=vit_mini", "backbone.patch_size=7", "batchformer.position=vit_blocks",
              "batchformer.insert_after=[0,2]", "batchformer.share_across_inserts=false",
              "batchformer.key_branch=same_batch")


def _bf_overrides(bf: str) -> tuple:
    if bf == "off":
        return ()
    if bf == "global-context-matched":
        return ("batchformer.enabled=true", "batchformer.scope=global", "batchformer.key_branch=context_matched")
    return ("batchformer.enabled=true", "batchformer.scope=global", *(VIT_BLOCKS if bf == "vit_blocks-global" else ()))


@pytest.mark.slow
@pytest.mark.parametrize("bf", ["off", "global", "global-context-matched", "vit_blocks-global"])
def test_two_process_gradients_equal_one_process_on_the_global_batch(tmp_path, bf):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), bf), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    torch.manual_seed(0)
    # one process, the whole batch; split BN with 2 contiguous groups = each rank's BN
    overrides = [o for o in OVERRIDES if not o.startswith("train.batch_size=")]  # each key once
    cfg = tiny_config(None, *overrides, "moco.split_bn_groups=2", "train.batch_size=64", *_bf_overrides(bf))
    model = build_model(cfg, 1, 28).train()
    x1, x2 = _inputs()
    model(x1, x2, momentum=0.9)["loss"].backward()
    single = _grads(model)

    assert single.keys() == ranks[0]["grads"].keys()
    if bf != "off":
        assert any(k.startswith("batchformer") for k in single)
    for name, g in single.items():
        for r in range(2):
            assert torch.allclose(ranks[r]["grads"][name], g, rtol=1e-4, atol=1e-6), (name, r)
    assert torch.equal(ranks[0]["queue"], model.queue) and torch.equal(ranks[1]["queue"], model.queue)
    if bf == "global-context-matched":
        for r in range(2):
            assert torch.allclose(ranks[r]["feature_queue"], model.feature_queue, atol=1e-6)

    for r in range(2):
        assert torch.equal(ranks[r]["restored"], ranks[r]["rows"])
    both = torch.cat([ranks[0]["shuffled"], ranks[1]["shuffled"]]).flatten().sort().values
    assert torch.equal(both, torch.cat([ranks[0]["rows"], ranks[1]["rows"]]).flatten().sort().values)
    assert not torch.equal(ranks[0]["shuffled"], ranks[0]["rows"])

    # global-scope BatchFormer on each rank = one process on the concatenated batch
    from ssl_bf.models.batchformer import BatchFormer
    torch.manual_seed(1)
    reference = BatchFormer(16, dropout=0.0).train()
    feats = torch.randn(2 * N, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = reference.transform(feats)
    for r in range(2):
        assert torch.allclose(ranks[r]["global"], full[r * N:(r + 1) * N], atol=1e-5)
        assert not torch.allclose(ranks[r]["local"], full[r * N:(r + 1) * N], atol=1e-3)
