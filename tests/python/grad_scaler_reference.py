"""Reference trajectory of torch.amp.GradScaler for tests/unit/precision_test.cpp.

    grad_scaler_reference.py                          # the trajectory
    grad_scaler_reference.py state <cpp.pt> <py.pt>   # states across the language line

The C++ test runs the same sequence with cppfabric::precision::GradScaler and compares every
line: after each step the scale, the growth tracker, whether the optimizer stepped, and the
parameters; then the final state_dict. Floats are printed with repr (shortest round trip).

state: loads the state_dict C++ saved to <cpp.pt> (torch.load(weights_only=True)) into a fresh
GradScaler("cpu"), runs RESUME_STEPS of `short_run` and prints `cpp_resumed <i> <scale>
<tracker>` lines (the scale as %.17g); then runs a scaler of its own SAVE_AT steps, torch.save()s its state_dict to
<py.pt>, and prints `py_resumed` lines for RESUME_STEPS more.
"""

import math
import sys

import torch

INF_STEPS = {2: ("weight", (0, 0), math.inf), 6: ("weight", (1, 2), -math.inf), 9: ("bias", (1,), math.nan)}
EXPLICIT_UNSCALE_STEPS = {4}


def main() -> None:
    torch.set_num_threads(1)
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.1, 0.2, 0.3], [-0.4, 0.5, -0.6]]))
        model.bias.copy_(torch.tensor([0.01, -0.02]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_factor=2.0, backoff_factor=0.5,
                                  growth_interval=3)
    for step in range(12):
        optimizer.zero_grad()
        x = torch.tensor([[step + 1.0, 0.5, -1.0]]) * 0.1
        loss = model(x).pow(2).sum()
        scaler.scale(loss).backward()
        if step in INF_STEPS:
            name, index, value = INF_STEPS[step]
            getattr(model, name).grad[index] = value
        if step in EXPLICIT_UNSCALE_STEPS:
            scaler.unscale_(optimizer)
        before = model.weight.detach().clone()
        scaler.step(optimizer)
        stepped = int(not torch.equal(before, model.weight.detach()))
        scaler.update()
        state = scaler.state_dict()
        values = [state["scale"], state["_growth_tracker"], stepped]
        values += model.weight.detach().flatten().tolist() + model.bias.detach().tolist()
        print("step", step, " ".join(repr(float(v)) for v in values))
    state = scaler.state_dict()
    print("state", " ".join(f"{k}={float(v)!r}" for k, v in sorted(state.items())))


SAVE_AT = 3
RESUME_STEPS = 6


def short_run(scaler, first, count, tag):
    """`count` steps of a small problem; every step i with i % 3 == 1 has an inf gradient."""
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    optimizer = torch.optim.SGD([p], lr=0.1)
    for i in range(first, first + count):
        optimizer.zero_grad()
        scaler.scale((p * p).sum()).backward()
        if i % 3 == 1:
            p.grad[0] = math.inf
        scaler.step(optimizer)
        scaler.update()
        if tag:
            state = scaler.state_dict()
            print(tag, i, format(float(state["scale"]), ".17g"), state["_growth_tracker"])


def states(cpp_path, py_path):
    resumed = torch.amp.GradScaler("cpu")
    resumed.load_state_dict(torch.load(cpp_path, weights_only=True))
    short_run(resumed, SAVE_AT, RESUME_STEPS, "cpp_resumed")
    own = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=2)
    short_run(own, 0, SAVE_AT, None)
    torch.save(own.state_dict(), py_path)
    short_run(own, SAVE_AT, RESUME_STEPS, "py_resumed")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "state":
        states(sys.argv[2], sys.argv[3])
    else:
        main()
