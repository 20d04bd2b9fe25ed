"""A sharded checkpoint written by real Python FSDP through Lightning Fabric, for
checkpoint_sharded_test.cpp to read.

    fsdp_reference.py save <dir> <expected.pt> <port>

Two processes (Gloo, CPU) run lightning.fabric.Fabric(strategy=FSDPStrategy(state_dict_type=
"sharded")): FSDP1 (FullyShardedDataParallel, use_orig_params=True as Lightning sets it, FULL_SHARD,
device_id None on the CPU) around the model below, AdamW, SAVE_STEPS steps, then fabric.save(<dir>,
{"model", "optimizer", "step"}) -- Lightning's own save_checkpoint: SHARDED_STATE_DICT context,
FSDP.optim_state_dict for the optimizer, torch.distributed.checkpoint.save, meta.pt on rank 0.

<expected.pt> (torch.save, rank 0) holds what the C++ side compares with, gathered through FSDP's
FULL_STATE_DICT (what Lightning's "full" form writes):
  model       {name: tensor} after SAVE_STEPS steps
  optimizer   {"state": {name: {"step", "exp_avg", "exp_avg_sq"}}, "param_groups": [...]}
  lr          the learning rate
  next_model  {name: tensor} after one more step (batch(SAVE_STEPS)) from the saved state
  step        SAVE_STEPS

The model's names match the C++ model in checkpoint_sharded_test.cpp (fc1, mid, fc2); batches are
computed (no RNG) so both languages build the same ones: batch(k) has GLOBAL_ROWS rows, each rank
takes its contiguous 1/world.
"""

import os
import sys
import warnings

import torch
from torch import nn

warnings.filterwarnings("ignore")

SAVE_STEPS = 3
GLOBAL_ROWS = 12  # divisible by 1, 2, 3 and 4 processes
LR = 1e-2
WEIGHT_DECAY = 1e-2


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 15)
        self.mid = nn.Linear(15, 15)
        self.fc2 = nn.Linear(15, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.mid(torch.tanh(self.fc1(x)))))


def batch(step):
    i = torch.arange(GLOBAL_ROWS * 8, dtype=torch.float32).reshape(GLOBAL_ROWS, 8)
    x = torch.sin(i * 0.37 + step)
    j = torch.arange(GLOBAL_ROWS * 4, dtype=torch.float32).reshape(GLOBAL_ROWS, 4)
    y = torch.cos(j * 0.23 - step)
    return x, y


def train_step(strategy, model, optimizer, step):
    rows = GLOBAL_ROWS // strategy.world_size
    x, y = batch(step)
    x = x[strategy.global_rank * rows:(strategy.global_rank + 1) * rows]
    y = y[strategy.global_rank * rows:(strategy.global_rank + 1) * rows]
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    strategy.backward(loss, model)
    optimizer.step()


def full_state(model, optimizer):
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp.api import FullOptimStateDictConfig

    # Lightning's full-state context, less offload_to_cpu: on a CPU-device FSDP that offload
    # crashes torch 2.11 (SIGSEGV cloning the unsharded parameters).
    with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT,
                              FullStateDictConfig(offload_to_cpu=False, rank0_only=False),
                              FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=False)):
        params = {k: v.detach().clone() for k, v in model.state_dict().items()}
        optim = FSDP.optim_state_dict(model, optimizer)
    return params, optim


def _save_worker(rank, folder, expected, port):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    os.environ["LOCAL_RANK"] = str(rank)  # processes created externally: Lightning spawns none
    os.environ["NODE_RANK"] = "0"
    from lightning.fabric.accelerators import CPUAccelerator
    from lightning.fabric.plugins.environments import LightningEnvironment
    from lightning.fabric.strategies import FSDPStrategy

    # Fabric(accelerator="cpu", strategy="fsdp") refuses the CPU in its connector, and the
    # strategy's setup_module passes device_id=None, which torch 2.11's FSDP1 refuses without an
    # accelerator. So the strategy is built here as the connector would build it, and the model
    # wrapped as its setup_module does but with device_id=cpu; the save is Lightning's own.
    strategy = FSDPStrategy(accelerator=CPUAccelerator(),
                            parallel_devices=[torch.device("cpu")] * 2,
                            cluster_environment=LightningEnvironment(),
                            process_group_backend="gloo", state_dict_type="sharded")
    strategy.setup_environment()
    torch.manual_seed(1234)  # the same initial model on both ranks
    from torch.distributed.fsdp import FullyShardedDataParallel

    model = FullyShardedDataParallel(Net(), cpu_offload=strategy.cpu_offload,
                                     mixed_precision=strategy.mixed_precision_config,
                                     sharding_strategy=strategy.sharding_strategy,
                                     device_id=torch.device("cpu"), **strategy._fsdp_kwargs)
    assert strategy._fsdp_kwargs == {"use_orig_params": True}
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    for step in range(SAVE_STEPS):
        train_step(strategy, model, optimizer, step)
    # Lightning's own save: fabric.save(folder, state) calls exactly this.
    strategy.save_checkpoint(folder, {"model": model, "optimizer": optimizer, "step": SAVE_STEPS})
    params, optim = full_state(model, optimizer)
    train_step(strategy, model, optimizer, SAVE_STEPS)
    next_params, _ = full_state(model, optimizer)
    if rank == 0:
        torch.save({"model": params, "optimizer": optim, "lr": LR, "next_model": next_params,
                    "step": SAVE_STEPS}, expected)
    strategy.barrier()
    torch.distributed.destroy_process_group()


def save(folder, expected, port):
    import torch.multiprocessing as mp

    mp.start_processes(_save_worker, args=(folder, expected, port), nprocs=2,
                       start_method="fork")
    print("ok 1")


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "save":
        save(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        raise SystemExit(f"unknown mode {mode}")
