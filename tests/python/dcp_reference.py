"""Sharded (torch.distributed.checkpoint) checkpoints across the language line, for
checkpoint_sharded_test.cpp.

    dcp_reference.py read   <dir> <out_dir>      # a folder cppfabric wrote
    dcp_reference.py write  <dir> <expected.pt>  # write one (one process) for cppfabric to read
    dcp_reference.py write2 <dir> <expected.pt>  # the same, saved by 2 processes (Gloo) as
                                                 # DTensors sharded over dim 0 (FSDP2's layout)
    dcp_reference.py torchload <file> <out.pt>   # torch.load(weights_only=True), then torch.save
    dcp_reference.py read3 <dir> <out.pt> <port> # 3 processes (Gloo) dcp.load a folder into
                                                 # DTensors sharded over dim 0, then gather

read writes three plain torch.save files into <out_dir> for the C++ test to compare:
  dcp.pt        torch.distributed.checkpoint.format_utils.dcp_to_torch_save(<dir>)
  lightning.pt  lightning.fabric.utilities.load._load_distributed_checkpoint(<dir>) (what
                `fabric consolidate` writes; includes meta.pt)
  cli.pt        `python -m lightning.fabric.utilities.consolidate_checkpoint <dir> --output_file`
  load.pt       dcp.load() into a state of zeros of the right shapes (the template is built from
                dcp.pt), i.e. the ordinary load path with its own flattening of the template.
write saves a state with bf16, int64, 0-d tensors, nested dicts, a list of dicts
(param_groups) and non-tensor values, and torch.save()s the same state as <expected.pt>.
"""

import os
import sys
import warnings

import torch
import torch.distributed.checkpoint as dcp

warnings.filterwarnings("ignore")


def python_state():
    g = torch.Generator().manual_seed(3)
    return {
        "model": {
            "fc.weight": torch.randn(5, 3, generator=g),
            "fc.bias": torch.randn(3, generator=g).to(torch.bfloat16),
            "embed.weight": torch.randint(-1000, 1000, (4, 6), generator=g, dtype=torch.int64),
            "scale": torch.tensor(2.5),
        },
        "optimizer": {
            "state": {"fc.weight": {"step": torch.tensor(7.0), "exp_avg": torch.ones(5, 3)}},
            "param_groups": [{"lr": 0.01, "betas": (0.9, 0.999), "params": ["fc.weight"]}],
        },
        "step": 42,
        "name": "python",
    }


def to_zeros(value):
    if isinstance(value, torch.Tensor):
        return torch.zeros_like(value)
    if isinstance(value, dict):
        return {k: to_zeros(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_zeros(v) for v in value]
    return value


def read(folder, out_dir):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    from lightning.fabric.utilities.load import _load_distributed_checkpoint
    from pathlib import Path

    dcp_to_torch_save(folder, os.path.join(out_dir, "dcp.pt"))
    torch.save(_load_distributed_checkpoint(Path(folder)), os.path.join(out_dir, "lightning.pt"))
    import subprocess

    subprocess.run([sys.executable, "-W", "ignore", "-m",
                    "lightning.fabric.utilities.consolidate_checkpoint", folder, "--output_file",
                    os.path.join(out_dir, "cli.pt")], check=True)
    full = torch.load(os.path.join(out_dir, "dcp.pt"), weights_only=False)
    template = to_zeros(full)
    dcp.load(template, checkpoint_id=folder)
    torch.save(template, os.path.join(out_dir, "load.pt"))
    print("ok 1")


def write(folder, expected):
    state = python_state()
    torch.save(state, expected)
    dcp.save(state, checkpoint_id=folder)
    print("ok 1")


def _write2_worker(rank, folder, port):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    mesh = init_device_mesh("cpu", (2,))
    state = python_state()
    sharded = {
        "model": {k: distribute_tensor(v, mesh, [Shard(0)]) if v.dim() > 0 else v
                  for k, v in state["model"].items()},
        "step": state["step"],
    }
    dcp.save(sharded, checkpoint_id=folder)
    dist.destroy_process_group()


def write2(folder, expected, port):
    import torch.multiprocessing as mp

    state = python_state()
    torch.save({"model": state["model"], "step": state["step"]}, expected)
    mp.start_processes(_write2_worker, args=(folder, port), nprocs=2, start_method="fork")
    print("ok 1")


def _read3_worker(rank, folder, out, port):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=3)
    mesh = init_device_mesh("cpu", (3,))
    metadata = dcp.FileSystemReader(folder).read_metadata()
    model = {}
    for key, md in metadata.state_dict_metadata.items():
        if key.startswith("model."):
            zeros = torch.zeros(md.size, dtype=md.properties.dtype)
            model[key[len("model."):]] = distribute_tensor(zeros, mesh, [Shard(0)])
    state = {"model": model, "optimizer": {"param_groups": [{"lr": 0.0}]}}
    dcp.load(state, checkpoint_id=folder)
    full = {"model": {k: v.full_tensor() for k, v in model.items()},
            "optimizer": state["optimizer"]}
    if rank == 0:
        torch.save(full, out)
    dist.destroy_process_group()


def read3(folder, out, port):
    import torch.multiprocessing as mp

    mp.start_processes(_read3_worker, args=(folder, out, port), nprocs=3, start_method="fork")
    print("ok 1")


def torchload(path, out):
    value = torch.load(path, weights_only=True)
    torch.save(value, out)
    print("ok 1")


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "read":
        read(sys.argv[2], sys.argv[3])
    elif mode == "write":
        write(sys.argv[2], sys.argv[3])
    elif mode == "write2":
        write2(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif mode == "read3":
        read3(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif mode == "torchload":
        torchload(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(f"unknown mode {mode}")
