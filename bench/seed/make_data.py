#!/usr/bin/env python3
"""Writes CIFAR-10-shaped data with a learnable class signal, in both on-disk forms of CIFAR-10:
cifar-10-batches-bin (what cppfabric's CIFAR10 reads) and cifar-10-batches-py (what torchvision's
CIFAR10 reads), from the same arrays, so the two programs of a side-by-side run see identical
images. Machines without network (the GPU machines) can run it; the real CIFAR-10 is not needed.

    make_data.py --out DIR [--train 50000] [--val 10000] [--seed 0]

Each image is a grey background with its class's colour and a stripe pattern of the class's
orientation and frequency at a random phase and random strength, under pixel noise: faint images
are hard, so accuracy climbs over epochs instead of reaching 100% at once.
"""
import argparse
import os
import pickle

import numpy as np

FOLDERS = ("cifar-10-batches-bin", "cifar-10-batches-py")
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make(n, rng):
    labels = rng.integers(0, 10, size=n, dtype=np.int64)
    colours = np.random.default_rng(1234).uniform(-1, 1, size=(10, 3)).astype(np.float32)
    angle = np.arange(10, dtype=np.float32) * (np.pi / 10)
    freq = 0.25 + 0.05 * (np.arange(10) % 4)
    yy, xx = np.meshgrid(np.arange(32, dtype=np.float32), np.arange(32, dtype=np.float32),
                         indexing="ij")
    images = np.empty((n, 3, 32, 32), dtype=np.uint8)
    for start in range(0, n, 2048):
        lab = labels[start:start + 2048]
        m = len(lab)
        strength = rng.uniform(0.0, 1.0, size=(m, 1, 1, 1)).astype(np.float32)
        phase = rng.uniform(0, 2 * np.pi, size=(m, 1, 1)).astype(np.float32)
        a = angle[lab][:, None, None]
        f = freq[lab][:, None, None]
        stripes = np.sin(f * (np.cos(a) * xx + np.sin(a) * yy) + phase)[:, None]
        signal = colours[lab][:, :, None, None] * (0.6 + 0.4 * stripes)
        noise = rng.normal(0, 1.0, size=(m, 3, 32, 32)).astype(np.float32)
        brightness = rng.normal(0, 0.3, size=(m, 1, 1, 1)).astype(np.float32)
        pixels = 128 + 40 * (strength * signal + noise + brightness)
        images[start:start + m] = np.clip(pixels, 0, 255).astype(np.uint8)
    return images, labels


def write(out, name_bin, name_py, images, labels):
    records = np.empty((len(labels), 3073), dtype=np.uint8)
    records[:, 0] = labels
    records[:, 1:] = images.reshape(len(labels), -1)
    records.tofile(os.path.join(out, FOLDERS[0], name_bin))
    with open(os.path.join(out, FOLDERS[1], name_py), "wb") as f:
        # str keys: what torchvision finds after pickle.load(encoding="latin1") of the official files
        pickle.dump({"batch_label": name_py, "labels": labels.tolist(),
                     "data": images.reshape(len(labels), -1),
                     "filenames": [f"{i}.png" for i in range(len(labels))]}, f)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=50000)
    p.add_argument("--val", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.train < 5 or args.val < 1:
        p.error(f"--train must be >= 5 and --val >= 1, got {args.train} and {args.val}")
    rng = np.random.default_rng(args.seed)
    for folder in FOLDERS:
        os.makedirs(os.path.join(args.out, folder), exist_ok=True)
    images, labels = make(args.train, rng)
    parts = np.array_split(np.arange(args.train), 5)
    for i, idx in enumerate(parts, start=1):
        write(args.out, f"data_batch_{i}.bin", f"data_batch_{i}", images[idx], labels[idx])
    images, labels = make(args.val, rng)
    write(args.out, "test_batch.bin", "test_batch", images, labels)
    with open(os.path.join(args.out, FOLDERS[0], "batches.meta.txt"), "w") as f:
        f.write("\n".join(CLASSES) + "\n")
    with open(os.path.join(args.out, FOLDERS[1], "batches.meta"), "wb") as f:
        pickle.dump({"label_names": CLASSES, "num_cases_per_batch": 10000, "num_vis": 3072}, f)
    print(f"wrote {args.train} training and {args.val} validation images to {args.out}")


if __name__ == "__main__":
    main()
