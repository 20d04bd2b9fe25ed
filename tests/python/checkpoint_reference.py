"""Checkpoints across the language line, for checkpoint_python_test.cpp.

    checkpoint_reference.py read  <path> <optimizer>   # a file cppfabric wrote
    checkpoint_reference.py write <path> <optimizer>   # write one for cppfabric to read

Both build the model the C++ test builds: Sequential(Linear(4, 8), BatchNorm1d(8), ReLU(),
Linear(8, 3)), and the optimizer named on the command line (sgd, adam, adamw, adagrad, rmsprop)
with the test's hyper-parameters. Output: `key value` lines with repr'd floats.

read:  torch.load(weights_only=True) must succeed; Lightning Fabric.load puts the file into a
       fresh model and optimizer; prints `model_equal 1` when every tensor equals the file's, the
       plain values, and `loss_after` (one more step on the checkpoint's batch, then the loss).
write: trains 3 steps, fabric.save()s model, optimizer, scheduler, scalars and the batch, then
       prints `loss_after` as above and the optimizer state it saved.
"""

import sys

import torch
from lightning.fabric import Fabric


def build_model():
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 3)
    )


def build_optimizer(name, params):
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=0.01, betas=(0.8, 0.95), eps=1e-7, amsgrad=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=0.01, weight_decay=0.05)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=0.05, lr_decay=0.01, initial_accumulator_value=0.1)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=0.01, momentum=0.5, centered=True)
    raise SystemExit(f"unknown optimizer {name}")


def step(model, opt, x, y):
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    return torch.nn.functional.mse_loss(model(x), y).item()


def read(path, opt_name):
    raw = torch.load(path, weights_only=True)
    fabric = Fabric(accelerator="cpu", devices=1)
    model = build_model()
    opt = build_optimizer(opt_name, model.parameters())
    model, opt = fabric.setup(model, opt)
    state = {"model": model, "optimizer": opt, "epoch": -1}
    remainder = fabric.load(path, state)
    equal = all(
        torch.equal(model.state_dict()[k], v) for k, v in raw["model"].items()
    ) and set(model.state_dict()) == set(raw["model"])
    print("model_equal", int(equal))
    print("keys", ",".join(sorted(raw)))
    print("epoch", state["epoch"])
    print("ratio", repr(remainder["ratio"]))
    print("name", remainder["name"])
    print("flag", int(remainder["flag"]))
    print("nothing", remainder["nothing"] is None)
    print("scheduler_last_epoch", raw["scheduler"]["last_epoch"])
    print("scheduler_base_lr", repr(raw["scheduler"]["base_lrs"][0]))
    # Optimizer state must be the one written (Fabric.load -> optimizer.load_state_dict).
    saved = raw["optimizer"]
    loaded = opt.state_dict()
    same = True
    for idx, entry in saved["state"].items():
        for key, value in entry.items():
            other = loaded["state"][idx][key]
            if torch.is_tensor(value):
                same &= torch.equal(value.to(other.dtype), other)
            else:
                same &= value == other
    print("optimizer_equal", int(same))
    print("param_group_lr", repr(loaded["param_groups"][0]["lr"]))
    # The groups carry initial_lr, so a scheduler can be rebuilt at the saved epoch.
    fresh = build_optimizer(opt_name, build_model().parameters())
    fresh.load_state_dict(saved)
    try:
        torch.optim.lr_scheduler.StepLR(
            fresh, step_size=2, gamma=0.5, last_epoch=raw["scheduler"]["last_epoch"]
        )
        print("rebuilt_scheduler", 1)
    except KeyError as error:
        print("rebuilt_scheduler", repr(str(error)).replace(" ", "_"))
    print("loss_after", repr(step(model, opt, remainder["batch_x"], remainder["batch_y"])))


def write(path, opt_name):
    torch.manual_seed(1234)
    fabric = Fabric(accelerator="cpu", devices=1)
    model = build_model()
    opt = build_optimizer(opt_name, model.parameters())
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    model, opt = fabric.setup(model, opt)
    x = torch.randn(16, 4)
    y = torch.randn(16, 3)
    for _ in range(3):
        step(model, opt, x, y)
        scheduler.step()
    fabric.save(
        path,
        {
            "model": model,
            "optimizer": opt,
            "scheduler": scheduler,
            "epoch": 7,
            "ratio": 0.25,
            "name": "python",
            "flag": True,
            "nested": {"a": [1, 2, (3, 4.5)], "b": None},
            "batch_x": x,
            "batch_y": y,
        },
    )
    sd = opt.state_dict()
    print("lr", repr(sd["param_groups"][0]["lr"]))
    print("scheduler_last_epoch", scheduler.last_epoch)
    print("loss_after", repr(step(model, opt, x, y)))


if __name__ == "__main__":
    mode, path, opt_name = sys.argv[1:4]
    (read if mode == "read" else write)(path, opt_name)
