#!/usr/bin/env python3
"""Side by side, in one run: the Python seed script (bench/seed/cifar10_fabric.py, Lightning
Fabric + torchvision), the C++ example (examples/cifar10) and the compute floor
(bench_cifar10_floor: the same model's steps on batches already in memory), on the same generated
CIFAR-shaped data (bench/seed/make_data.py). Prints per-epoch seconds, images/s and validation
accuracy of each, and the ratios.

    compare.py [--accelerator cpu] [--epochs 2] [--train 10000] [--val 2000] [--workers 4]
               [--precision 16-mixed] [--batch-size 128] [--build build/ci] [--work DIR]

Epoch times are the programs' own (the `epoch_time_s` each logs to CSV: training + validation,
without the checkpoint), so start-up is not counted on either side. The first epoch includes
warm-up (worker start, allocator, cuDNN autotune); with --epochs > 1 the ratios use the later ones.
"""
import argparse
import csv
import glob
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def run(cmd, cwd, log):
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.exit(f"compare: {' '.join(cmd)} failed with exit code {proc.returncode}; see {log}")
    return time.perf_counter() - start


def metrics(log_dir):
    files = sorted(glob.glob(os.path.join(log_dir, "csv", "cifar10", "version_*", "metrics.csv")))
    if not files:
        sys.exit(f"compare: no metrics.csv under {log_dir}")
    rows = {}
    with open(files[-1]) as f:
        for row in csv.DictReader(f):
            if row.get("epoch_time_s"):
                rows[int(float(row["step"]))] = (float(row["epoch_time_s"]), float(row["val/acc"]))
    return [rows[k] for k in sorted(rows)]


def floor_epochs(log):
    out = []
    for line in open(log):
        m = re.search(r"Epoch (\d+) \| Val acc: ([0-9.]+) \| ([0-9.]+) s", line)
        if m:
            out.append((float(m.group(3)), float(m.group(2))))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--accelerator", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train", type=int, default=10000)
    p.add_argument("--val", type=int, default=2000)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--precision", default="16-mixed")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--build", default=os.path.join(ROOT, "build", "ci"))
    p.add_argument("--work", default="/tmp/cppfabric-seed-compare")
    p.add_argument("--skip-seed", action="store_true", help="only the C++ sides")
    p.add_argument("--device-data", action="store_true",
                   help="run the example with --device-data (images kept and augmented on the device)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False,
                   help="run the example with --channels-last (model and batches in NHWC)")
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=False,
                   help="also run the example with --cuda-graph (its training step replayed from "
                        "a CUDA graph), as one more side")
    args = p.parse_args()
    if args.epochs < 1:
        p.error(f"--epochs must be >= 1, got {args.epochs}")
    example = os.path.join(args.build, "examples", "cifar10", "cifar10")
    floor = os.path.join(args.build, "bench", "bench_cifar10_floor")
    for exe in (example, floor):
        if not os.access(exe, os.X_OK):
            sys.exit(f"compare: {exe} is missing; build the targets cifar10 and bench_cifar10_floor")

    data = os.path.join(args.work, f"data-{args.train}-{args.val}")
    if not os.path.isdir(os.path.join(data, "cifar-10-batches-py")):
        subprocess.run([sys.executable, os.path.join(HERE, "make_data.py"), "--out", data,
                        "--train", str(args.train), "--val", str(args.val)], check=True)
    common = ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
              "--precision", args.precision, "--accelerator", args.accelerator]
    sides = []
    if not args.skip_seed:
        d = os.path.join(args.work, "seed")
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        wall = run([sys.executable, os.path.join(HERE, "cifar10_fabric.py"), "--data-dir", data,
                    "--workers", str(args.workers), "--devices", "1", *common], d,
                   os.path.join(d, "out.log"))
        sides.append(("seed (Python)", metrics(os.path.join(d, "logs")), wall))
    ours = [("cppfabric", "cppfabric", [])]
    if args.cuda_graph:
        ours.append(("cppfabric (cuda graph)", "cppfabric-graph", ["--cuda-graph"]))
    for name, folder, extra in ours:
        d = os.path.join(args.work, folder)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        wall = run([example, "--data-dir", data, "--no-download", "--workers", str(args.workers),
                    "--devices", "1", *common, *(["--device-data"] if args.device_data else []),
                    *(["--channels-last"] if args.channels_last else []), *extra], d,
                   os.path.join(d, "out.log"))
        sides.append((name, metrics(os.path.join(d, "logs")), wall))
    d = os.path.join(args.work, "floor")
    os.makedirs(d, exist_ok=True)
    log = os.path.join(d, "out.log")
    wall = run([floor, "--train-size", str(args.train), "--val-size", str(args.val), *common], d, log)
    sides.append(("floor (C++, data in memory)", floor_epochs(log), wall))

    images = args.train + args.val
    print(f"CIFAR-shaped data: {args.train} training + {args.val} validation images, "
          f"{args.accelerator}, {args.precision}, batch {args.batch_size}, {args.workers} workers"
          + (", cppfabric with --device-data" if args.device_data else "")
          + (", cppfabric with --channels-last" if args.channels_last else "")
          + (", cppfabric also with --cuda-graph" if args.cuda_graph else ""))
    print(f"{'side':30} {'epoch':>5} {'seconds':>9} {'images/s':>10} {'val acc':>8}")
    for name, epochs, wall in sides:
        for i, (seconds, acc) in enumerate(epochs):
            print(f"{name:30} {i:>5} {seconds:>9.3f} {images / seconds:>10.0f} {acc:>8.4f}")
        print(f"{name:30} {'wall':>5} {wall:>9.3f}   (whole process, start-up included)")
    later = slice(1, None) if args.epochs > 1 else slice(0, None)
    which = "epochs 1.." if args.epochs > 1 else "epoch 0"
    times = {name: [s for s, _ in epochs] for name, epochs, _ in sides}

    def ratio(a, b):  # per-epoch ratios a/b over the compared epochs: min / median / max
        r = sorted(x / y for x, y in list(zip(times[a], times[b]))[later])
        return f"min {r[0]:.3f} median {statistics.median(r):.3f} max {r[-1]:.3f}"

    accs = {name: epochs[-1][1] for name, epochs, _ in sides}
    for name, _, _ in ours:
        if "seed (Python)" in times:
            print(f"ratio {name} / seed epoch time ({which}): {ratio(name, 'seed (Python)')}")
            print(f"speed-up of {name} over the seed ({which}): {ratio('seed (Python)', name)}")
            print(f"final val acc: seed {accs['seed (Python)']:.4f}, {name} {accs[name]:.4f} "
                  f"(difference {100 * (accs[name] - accs['seed (Python)']):+.2f} points)")
        print(f"ratio {name} / floor epoch time ({which}): "
              f"{ratio(name, 'floor (C++, data in memory)')}")

if __name__ == "__main__":
    main()
