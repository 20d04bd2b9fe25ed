"""torchvision side of bench_dataloader: the CIFAR-10 training pipeline from memory.

Usage: python dataloader_torchvision.py IMAGES WORKERS BATCH PASSES
Prints `torchvision images_per_s <value>` (the timed passes after one warm-up pass), or
`torchvision unavailable <reason>` when torchvision cannot be imported.
"""

import sys
import time


def main():
    images, workers, batch, passes = (int(v) for v in sys.argv[1:5])
    try:
        import numpy as np
        import torch
        from PIL import Image
        from torch.utils.data import DataLoader, Dataset
        from torchvision import transforms as T
    except Exception as exc:  # noqa: BLE001 - any import failure means "skip"
        print(f"torchvision unavailable {type(exc).__name__}: {exc}")
        return

    class InMemoryCIFAR(Dataset):
        """What torchvision.datasets.CIFAR10.__getitem__ does, on arrays already in memory."""

        def __init__(self, data, targets, transform):
            self.data, self.targets, self.transform = data, targets, transform

        def __len__(self):
            return len(self.data)

        def __getitem__(self, index):
            img = Image.fromarray(self.data[index])
            return self.transform(img), self.targets[index]

    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(images, 32, 32, 3), dtype=np.uint8)
    targets = rng.integers(0, 10, size=images).tolist()
    transform = T.Compose(
        [
            T.RandomHorizontalFlip(),
            T.RandomCrop(32, padding=4),
            T.ToTensor(),
            T.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        ]
    )
    torch.manual_seed(0)
    loader = DataLoader(
        InMemoryCIFAR(data, targets, transform),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    for _ in loader:  # warm-up: starts the workers
        pass
    start = time.perf_counter()
    seen = 0
    for _ in range(passes):
        for x, _y in loader:
            seen += x.shape[0]
    elapsed = time.perf_counter() - start
    print(f"torchvision images_per_s {seen / elapsed:.1f}")


if __name__ == "__main__":
    main()
