#!/usr/bin/env python3
"""Check that torch.distributed.checkpoint reads a DCP directory ptfile wrote.

usage: check_dcp_load.py SOURCE.pt DCP_DIR
  1. dcp_to_torch_save(DCP_DIR) equals torch.load(SOURCE.pt) (keys as str, as DCP makes them);
  2. dcp.load into a template of zeros on one process gives SOURCE's values;
  3. on 2 gloo ranks, dcp.load into DTensors sharded Shard(0) (tensors of at least one
     dimension; others replicated) gives SOURCE's values once gathered (full_tensor()).
Prints "ok" or raises.
"""
import copy
import os
import sys
import tempfile
import warnings

warnings.filterwarnings("ignore")
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save


def strk(x):
    if isinstance(x, dict):
        return {str(k): strk(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in x):
        return [strk(v) for v in x]
    return x


def cmp(x, y, p="root"):
    if isinstance(x, torch.Tensor):
        assert isinstance(y, torch.Tensor), p
        assert x.dtype == y.dtype and x.shape == y.shape, (p, x.dtype, y.dtype, x.shape, y.shape)
        assert torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)), p
    elif isinstance(x, dict):
        assert isinstance(y, dict) and list(x) == list(y), (p, list(x), list(y))
        for k in x:
            cmp(x[k], y[k], f"{p}.{k}")
    elif isinstance(x, list):
        assert len(x) == len(y), p
        for i, (u, v) in enumerate(zip(x, y)):
            cmp(u, v, f"{p}[{i}]")
    else:
        assert x == y, (p, x, y)


def zeros_like_tree(x):
    if isinstance(x, torch.Tensor):
        return torch.zeros_like(x)
    if isinstance(x, dict):
        return {k: zeros_like_tree(v) for k, v in x.items()}
    if isinstance(x, list):
        return [zeros_like_tree(v) for v in x]
    return copy.deepcopy(x)


def ranks(rank, world, init, src, d):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import distribute_tensor, Shard, Replicate

    mesh = init_device_mesh("cpu", (world,))
    want = strk(torch.load(src, weights_only=False))

    def shard(x):
        if isinstance(x, torch.Tensor):
            return distribute_tensor(torch.zeros_like(x), mesh, [Shard(0) if x.dim() else Replicate()])
        if isinstance(x, dict):
            return {k: shard(v) for k, v in x.items()}
        if isinstance(x, list):
            return [shard(v) for v in x]
        return copy.deepcopy(x)

    def full(x):
        if hasattr(x, "full_tensor"):
            return x.full_tensor()
        if isinstance(x, dict):
            return {k: full(v) for k, v in x.items()}
        if isinstance(x, list):
            return [full(v) for v in x]
        return x

    sd = shard(want)
    dcp.load(sd, checkpoint_id=d)
    cmp(full(sd), want, f"rank {rank}")
    dist.barrier()
    dist.destroy_process_group()


def main(src, d):
    want = strk(torch.load(src, weights_only=False))
    with tempfile.TemporaryDirectory() as t:
        pt = os.path.join(t, "x.pt")
        dcp_to_torch_save(d, pt)
        cmp(torch.load(pt, weights_only=False), want, "dcp_to_torch_save")
    sd = zeros_like_tree(want)
    dcp.load(sd, checkpoint_id=d)
    cmp(sd, want, "dcp.load")
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as t:
        mp.spawn(ranks, args=(2, "file://" + os.path.join(t, "init"), src, d), nprocs=2, join=True)
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
