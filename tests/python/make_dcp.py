#!/usr/bin/env python3
"""Write torch.distributed.checkpoint directories with torch itself and describe what
dcp_to_torch_save makes of each (the description schema of shared/fixtures/README.md).

usage: make_dcp.py OUT_DIR    writes OUT_DIR/NAME (the checkpoint) and OUT_DIR/NAME.json (its
                             description); prints the names as a JSON list
       make_dcp.py --hostile SRC OUT_DIR   damaged copies of SRC: prints {"case": directory}

  single     one process: nested dicts and a list, a non-contiguous view, 0-d, empty,
             bf16/f16/int types, non-tensor values (int, str, a dict of floats)
  many_files one process, single_file_per_rank=False (one .distcp per item)
  sharded    2 gloo ranks: DTensors Shard(0) uneven (5 rows over 2), Shard(1), Replicate()
  per_rank   2 gloo ranks with use_collectives=False: per-rank __N.metadata files
  zstd       `single` saved with the ZStandard extension (stream.zstd/1 items)
"""
import json
import os
import sys
import tempfile
import warnings

warnings.filterwarnings("ignore")
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import describe  # noqa: E402


def single_state():
    torch.manual_seed(0)
    return {
        "model": {
            "w": torch.randn(3, 4),
            "b": torch.randn(4).to(torch.bfloat16),
            "h": torch.randn(2, 2).half(),
            "layers": [torch.arange(6).reshape(2, 3).t(), torch.arange(4, dtype=torch.int32)],
        },
        "step": 7,
        "name": "hello",
        "lr": {"base": 0.5, "warmup": 10},
        "scalar": torch.tensor(1.5),
        "empty": torch.zeros(0, 2),
    }


def ranks(rank, world, init, out, collectives):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import distribute_tensor, Shard, Replicate

    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(1)
    row = torch.arange(20, dtype=torch.float32).reshape(5, 4)
    col = torch.arange(12, dtype=torch.int32).reshape(3, 4)
    rep = torch.randn(3)
    sd = {
        "row": distribute_tensor(row, mesh, [Shard(0)]),
        "col": distribute_tensor(col, mesh, [Shard(1)]),
        "rep": distribute_tensor(rep, mesh, [Replicate()]),
        "plain": torch.arange(3) + 100,
        "step": 3,
    }
    dcp.save(sd, checkpoint_id=out, no_dist=False) if collectives else dcp.save(
        sd, checkpoint_id=out, use_collectives=False
    )
    dist.barrier()
    dist.destroy_process_group()


def spawn(out, collectives):
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        init = "file://" + os.path.join(d, "init")
        mp.spawn(ranks, args=(2, init, out, collectives), nprocs=2, join=True)


def expected(out):
    with tempfile.TemporaryDirectory() as d:
        pt = os.path.join(d, "x.pt")
        dcp_to_torch_save(out, pt)
        return describe.describe(torch.load(pt, weights_only=False), {})


def main(root):
    os.makedirs(root, exist_ok=True)
    result = {}
    out = os.path.join(root, "single")
    dcp.save(single_state(), checkpoint_id=out)
    result["single"] = expected(out)
    out = os.path.join(root, "many_files")
    dcp.save(
        single_state(),
        storage_writer=dcp.FileSystemWriter(out, single_file_per_rank=False),
    )
    result["many_files"] = expected(out)
    from torch.distributed.checkpoint._extension import ZStandard

    out = os.path.join(root, "zstd")
    dcp.save(single_state(), storage_writer=dcp.FileSystemWriter(out, _extensions=[ZStandard()]))
    result["zstd"] = expected(out)
    out = os.path.join(root, "sharded")
    spawn(out, True)
    result["sharded"] = expected(out)
    out = os.path.join(root, "per_rank")
    spawn(out, False)
    # dcp_to_torch_save reads one .metadata: consolidate what the ranks wrote by hand.
    result["per_rank"] = result["sharded"]
    for name, desc in result.items():
        with open(os.path.join(root, name + ".json"), "w") as f:
            json.dump(desc, f)
    print(json.dumps(sorted(result)))




def hostile(src, root):
    """Damaged copies of the `single` checkpoint at SRC, one directory each under ROOT:
    {name: directory}."""
    import pickle
    import shutil

    made = {}

    def variant(name, edit):
        d = os.path.join(root, name)
        shutil.copytree(src, d)
        with open(os.path.join(d, ".metadata"), "rb") as f:
            md = pickle.load(f)
        edit(md, d)
        with open(os.path.join(d, ".metadata"), "wb") as f:
            pickle.dump(md, f)
        made[name] = d

    def first(md, want_tensor=True):
        for idx, info in md.storage_data.items():
            if (idx.offset is not None) == want_tensor:
                return idx, info
        raise SystemExit("no item")

    def past_eof(md, d):
        _, info = first(md)
        info.length = 1 << 20

    def escape(md, d):
        _, info = first(md)
        info.relative_path = "../" + info.relative_path

    def absolute(md, d):
        _, info = first(md)
        info.relative_path = "/etc/passwd"

    def transform(md, d):
        _, info = first(md)
        info.transform_descriptors = ["stream.rot13/1"]

    def overlap(md, d):
        from torch.distributed.checkpoint.metadata import ChunkStorageMetadata

        t = md.state_dict_metadata["model.w"]
        t.chunks.append(ChunkStorageMetadata(offsets=torch.Size([0, 0]), sizes=torch.Size([1, 1])))

    def outside(md, d):
        t = md.state_dict_metadata["model.w"]
        c = t.chunks[0]
        t.chunks[0] = type(c)(offsets=c.offsets, sizes=torch.Size([9, 4]))

    def zstd_bomb(md, d):
        import zstandard

        idx, info = first(md)
        with open(os.path.join(d, "bomb.distcp"), "wb") as f:
            f.write(zstandard.ZstdCompressor().compress(bytes(64 << 20)))
            n = f.tell()
        info.relative_path, info.offset, info.length = "bomb.distcp", 0, n
        info.transform_descriptors = ["stream.zstd/1"]

    variant("zstd_bomb", zstd_bomb)
    variant("past_eof", past_eof)
    variant("escape", escape)
    variant("absolute", absolute)
    variant("transform", transform)
    variant("overlap", overlap)
    variant("outside", outside)
    # A .metadata that names a global only an attack would.
    d = os.path.join(root, "rce")
    shutil.copytree(src, d)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + os.path.join(root, "PWNED"),))

    with open(os.path.join(d, ".metadata"), "wb") as f:
        pickle.dump(Evil(), f, protocol=4)
    made["rce"] = d
    return made


if __name__ == "__main__":
    if sys.argv[1] == "--hostile":
        print(json.dumps(hostile(sys.argv[2], sys.argv[3])))
    else:
        main(sys.argv[1])
