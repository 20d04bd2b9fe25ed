#!/usr/bin/env python3
"""The seed: Lightning Fabric's CIFAR-10 training script in Python (the program
examples/cifar10/main.cpp ports; docs/examples/cifar10.md sets them side by side). It is the
reference side of bench/seed/compare.py: torchvision's CIFAR10 and transforms, a DataLoader with
worker processes, Fabric with "16-mixed", AdamW, CosineAnnealingLR(T_max=20), CSV and TensorBoard
loggers and a checkpoint per epoch, as the C++ example does.

    cifar10_fabric.py --data-dir DIR [--epochs 20] [--batch-size 128] [--workers 4]
                      [--precision 16-mixed] [--accelerator auto] [--devices auto]
                      [--max-steps N] [--log-dir logs] [--checkpoint-dir checkpoints]

DIR holds cifar-10-batches-py (bench/seed/make_data.py writes one, with its cppfabric twin). The
one difference from the tutorial: generated data has no official checksums, so torchvision's
integrity check is skipped (download=False).
"""
import argparse
import os
import pickle
import time

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms as T
from lightning.fabric.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader
from torchvision.datasets import CIFAR10


class SimpleCNN(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
        self.fc1 = nn.Linear(128 * 4 * 4, 256)
        self.fc2 = nn.Linear(256, num_classes)
        self.dropout = nn.Dropout(0.25)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        x = torch.flatten(x, 1)
        x = self.dropout(F.relu(self.fc1(x)))
        return self.fc2(x)


class GeneratedCIFAR10(CIFAR10):
    # Generated files have no official md5 sums: skip the two checks that compare them.
    def _check_integrity(self):
        return True

    def _load_meta(self):
        with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


def main():
    p = argparse.ArgumentParser(description="Lightning Fabric CIFAR-10 (the seed script)")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--precision", default="16-mixed")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--devices", default="auto")
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--log-dir", default="logs")
    p.add_argument("--checkpoint-dir", default="checkpoints")
    args = p.parse_args()
    devices = int(args.devices) if args.devices.lstrip("-").isdigit() else args.devices

    loggers = [CSVLogger(f"{args.log_dir}/csv", name="cifar10"),
               TensorBoardLogger(f"{args.log_dir}/tensorboard", name="cifar10")]
    fabric = L.Fabric(accelerator=args.accelerator, devices=devices, precision=args.precision,
                      loggers=loggers)
    fabric.launch()
    fabric.seed_everything(42)

    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    train_tf = T.Compose([T.RandomHorizontalFlip(), T.RandomCrop(32, padding=4), T.ToTensor(),
                          T.Normalize(mean, std)])
    val_tf = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    with fabric.rank_zero_first():
        train_set = GeneratedCIFAR10(args.data_dir, train=True, download=False, transform=train_tf)
        val_set = GeneratedCIFAR10(args.data_dir, train=False, download=False, transform=val_tf)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                              num_workers=args.workers, pin_memory=True)
    val_loader = DataLoader(val_set, batch_size=2 * args.batch_size, num_workers=args.workers)

    model = SimpleCNN()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=1e-2)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=20)
    model, optimizer = fabric.setup(model, optimizer)
    train_loader, val_loader = fabric.setup_dataloaders(train_loader, val_loader)

    best_val_acc = 0.0
    for epoch in range(args.epochs):
        start = time.perf_counter()
        model.train()
        correct, total, loss_sum, steps = 0, 0, 0.0, 0
        for i, (x, y) in enumerate(train_loader):
            optimizer.zero_grad()
            outputs = model(x)
            loss = F.cross_entropy(outputs, y)
            fabric.backward(loss)
            optimizer.step()
            loss_sum += loss.item()
            correct += (outputs.argmax(1) == y).sum().item()
            total += y.size(0)
            steps += 1
            if i % 100 == 0:
                fabric.print(f"Epoch {epoch} | Batch {i}/{len(train_loader)} | "
                             f"Loss: {loss.item():.4f} | Acc: {100. * correct / total:.2f}%")
            if steps == args.max_steps:
                break
        scheduler.step()

        model.eval()
        val_correct = torch.zeros((), dtype=torch.long, device=fabric.device)
        val_total = torch.zeros((), dtype=torch.long, device=fabric.device)
        with torch.no_grad():
            for x, y in val_loader:
                val_correct += (model(x).argmax(1) == y).sum()
                val_total += y.size(0)
        val_correct = fabric.all_reduce(val_correct, reduce_op="sum")
        val_total = fabric.all_reduce(val_total, reduce_op="sum")
        acc = val_correct.item() / max(1, val_total.item())
        best_val_acc = max(best_val_acc, acc)
        seconds = time.perf_counter() - start
        fabric.print(f"Epoch {epoch} | Val acc: {acc:.4f} | Best: {best_val_acc:.4f} | "
                     f"lr {scheduler.get_last_lr()[0]:.2e} | {seconds:.1f} s")
        fabric.log_dict({"train/loss": loss_sum / max(steps, 1), "val/acc": acc,
                         "lr": scheduler.get_last_lr()[0], "epoch_time_s": seconds}, step=epoch)
        fabric.save(f"{args.checkpoint_dir}/epoch_{epoch}.ckpt",
                    {"model": model, "optimizer": optimizer, "scheduler": scheduler,
                     "epoch": epoch, "best_val_acc": best_val_acc})
    for logger in fabric.loggers:  # writes the CSV logger's buffered rows
        logger.finalize("success")


if __name__ == "__main__":
    main()
