"""Learning-rate trajectories from torch.optim.lr_scheduler, for lr_scheduler_test.cpp.

    lr_scheduler_reference.py              # trajectories
    lr_scheduler_reference.py save <dir>   # states saved mid-schedule, for C++ to resume
    lr_scheduler_reference.py load <dir>   # resume from the states C++ saved

Prints one line per scheduler per step: `<name> <step> <lr of group 0> <lr of group 1>` with
repr'd floats (step 0 is right after construction). Lines named `<name>_momentum` carry each
group's momentum (OneCycleLR with cycle_momentum). Keep the cases in step with the C++ test.

save: steps every case SAVE_AT times, torch.save()s {"scheduler": its state_dict(),
      "optimizer": the optimizer's state_dict()} to <dir>/<name>.py.pt, then steps RESUME_STEPS
      more times, printing the learning rates after each step (step numbers from 1).
load: builds every case afresh, loads <dir>/<name>.cpp.pt (torch.load(weights_only=True), then
      optimizer.load_state_dict and scheduler.load_state_dict, as after fabric.load) and prints
      RESUME_STEPS steps the same way.
"""

import sys

import torch
from torch.optim import SGD
from torch.optim import lr_scheduler as sched

STEPS = 30
SAVE_AT = 7
RESUME_STEPS = 15


def make_optimizer(momentum=0.0):
    a = torch.nn.Parameter(torch.zeros(2))
    b = torch.nn.Parameter(torch.zeros(3))
    return SGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.05}], lr=0.1, momentum=momentum)


def cases():
    opt = make_optimizer()
    yield "cosine", opt, sched.CosineAnnealingLR(opt, T_max=10, eta_min=0.001), False
    opt = make_optimizer()
    yield "step", opt, sched.StepLR(opt, step_size=7, gamma=0.5), False
    opt = make_optimizer()
    yield "multistep", opt, sched.MultiStepLR(opt, milestones=[20, 5, 12, 12], gamma=0.3), False
    opt = make_optimizer()
    yield "exponential", opt, sched.ExponentialLR(opt, gamma=0.9), False
    opt = make_optimizer()
    s = sched.LinearLR(opt, start_factor=0.25, end_factor=0.9, total_iters=8)
    yield "linear", opt, s, False
    opt = make_optimizer()
    yield "linear_default", opt, sched.LinearLR(opt), False
    opt = make_optimizer()
    yield "lambda", opt, sched.LambdaLR(opt, lambda epoch: 0.95**epoch), False
    opt = make_optimizer(momentum=0.9)
    yield "onecycle", opt, sched.OneCycleLR(opt, max_lr=[1.0, 0.5], total_steps=STEPS), True
    opt = make_optimizer()
    yield "onecycle_linear3", opt, sched.OneCycleLR(
        opt, max_lr=0.8, total_steps=STEPS + 5, pct_start=0.25, anneal_strategy="linear",
        cycle_momentum=False, div_factor=10.0, final_div_factor=100.0, three_phase=True), False
    opt = make_optimizer()
    s = sched.SequentialLR(
        opt,
        [sched.LinearLR(opt, start_factor=0.1, total_iters=5),
         sched.CosineAnnealingLR(opt, T_max=10),
         sched.ExponentialLR(opt, gamma=0.9)],
        milestones=[5, 15])
    yield "sequential", opt, s, False
    opt = make_optimizer()
    s = sched.SequentialLR(
        opt,
        [sched.ExponentialLR(opt, gamma=0.8),
         sched.StepLR(opt, step_size=4, gamma=0.5),
         sched.LambdaLR(opt, lambda epoch: 0.95**epoch)],
        milestones=[6, 18])
    yield "sequential2", opt, s, False


def print_step(name, step, opt, scheduler, momentum):
    print(name, step, " ".join(repr(lr) for lr in scheduler.get_last_lr()))
    if momentum:
        print(name + "_momentum", step, " ".join(repr(g["momentum"]) for g in opt.param_groups))


def resume(name, opt, scheduler, momentum):
    for step in range(1, RESUME_STEPS + 1):
        opt.step()
        scheduler.step()
        print_step(name, step, opt, scheduler, momentum)


def save(folder):
    for name, opt, scheduler, momentum in cases():
        for _ in range(SAVE_AT):
            opt.step()
            scheduler.step()
        state = {"scheduler": scheduler.state_dict(), "optimizer": opt.state_dict()}
        torch.save(state, f"{folder}/{name}.py.pt")
        resume(name, opt, scheduler, momentum)


def load(folder):
    for name, opt, scheduler, momentum in cases():
        state = torch.load(f"{folder}/{name}.cpp.pt", weights_only=True)
        opt.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        resume(name, opt, scheduler, momentum)


def main():
    if len(sys.argv) == 3:
        (save if sys.argv[1] == "save" else load)(sys.argv[2])
        return
    for name, opt, scheduler, momentum in cases():
        for step in range(STEPS + 1):
            if step > 0:
                opt.step()
                scheduler.step()
            print_step(name, step, opt, scheduler, momentum)


if __name__ == "__main__":
    main()
