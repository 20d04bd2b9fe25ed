"""Replays Throughput updates on Python Lightning Fabric's Throughput (the expectation for
tests/unit/throughput_test.cpp).

    python throughput_reference.py OPS_FILE

OPS_FILE lines (tab-separated):
    init    WORLD_SIZE  WINDOW_SIZE  AVAILABLE_FLOPS|-
    update  TIME  BATCHES  SAMPLES  LENGTHS|-  FLOPS|-
After every update it prints `compute()` as "KEY<TAB>repr(value)" lines, sorted, then "--".
"""

import sys

from lightning.fabric.utilities.throughput import Throughput


def main(ops_file):
    throughput = None
    with open(ops_file, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            op, *args = line.rstrip("\n").split("\t")
            if op == "init":
                flops = None if args[2] == "-" else float(args[2])
                throughput = Throughput(available_flops=flops, world_size=int(args[0]),
                                        window_size=int(args[1]))
            elif op == "update":
                throughput.update(
                    time=float(args[0]), batches=int(args[1]), samples=int(args[2]),
                    lengths=None if args[3] == "-" else int(args[3]),
                    flops=None if args[4] == "-" else int(args[4]))
                for key, value in sorted(throughput.compute().items()):
                    print(f"{key}\t{float(value)!r}")
                print("--")


if __name__ == "__main__":
    main(sys.argv[1])
