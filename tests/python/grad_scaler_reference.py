"""Reference trajectory of torch.amp.GradScaler for tests/unit/precision_test.cpp.

The C++ test runs the same sequence with cppfabric::precision::GradScaler and compares every
line: after each step the scale, the growth tracker, whether the optimizer stepped, and the
parameters; then the final state_dict. Floats are printed with repr (shortest round trip).
"""

import math

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


if __name__ == "__main__":
    main()
