"""Index orders from torch.utils.data samplers and DataLoader, for data_sampler_test.cpp.

One line per case: `<case key> : <indices separated by spaces>`. Keys:
  dist n replicas rank shuffle drop_last seed epoch   DistributedSampler after set_epoch(epoch)
  random_gen n seed passes                            RandomSampler(generator=seeded), passes joined
  random_global n seed passes                         torch.manual_seed(seed); RandomSampler()
  random_replacement n num_samples seed               RandomSampler(replacement=True, generator)
  loader_gen n batch drop_last seed passes            DataLoader(shuffle=True, generator=seeded)
  loader_global n batch seed passes                   torch.manual_seed(seed); DataLoader(shuffle=True)
Keep the grid in step with the C++ test, which builds the same keys.
"""

import itertools

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler


def emit(key, indices):
    print(f"{key} : {' '.join(str(int(i)) for i in indices)}")


def main():
    for n, replicas in itertools.product([0, 1, 5, 10, 17], [1, 2, 3, 4]):
        data = list(range(n))
        for rank, shuffle, drop_last, seed, epoch in itertools.product(
            range(replicas), [False, True], [False, True], [0, 42], [0, 3]
        ):
            sampler = DistributedSampler(
                data, num_replicas=replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
            )
            sampler.set_epoch(epoch)
            emit(f"dist {n} {replicas} {rank} {int(shuffle)} {int(drop_last)} {seed} {epoch}", list(sampler))

    for n, seed in itertools.product([1, 7, 100], [0, 5]):
        g = torch.Generator()
        g.manual_seed(seed)
        sampler = RandomSampler(range(n), generator=g)
        emit(f"random_gen {n} {seed} 3", list(sampler) + list(sampler) + list(sampler))
        torch.manual_seed(seed)
        sampler = RandomSampler(range(n))
        emit(f"random_global {n} {seed} 2", list(sampler) + list(sampler))
        g = torch.Generator()
        g.manual_seed(seed)
        sampler = RandomSampler(range(n), replacement=True, num_samples=70, generator=g)
        emit(f"random_replacement {n} 70 {seed}", list(sampler))

    for n, batch, drop_last, seed in itertools.product([10, 33], [1, 4], [False, True], [0, 7]):
        g = torch.Generator()
        g.manual_seed(seed)
        loader = DataLoader(list(range(n)), batch_size=batch, shuffle=True, drop_last=drop_last, generator=g)
        out = []
        for _ in range(2):
            for b in loader:
                out.extend(b.tolist())
        emit(f"loader_gen {n} {batch} {int(drop_last)} {seed} 2", out)
    for n, seed in itertools.product([10, 33], [0, 7]):
        torch.manual_seed(seed)
        loader = DataLoader(list(range(n)), batch_size=4, shuffle=True)
        out = []
        for _ in range(2):
            for b in loader:
                out.extend(b.tolist())
        emit(f"loader_global {n} 4 {seed} 2", out)


if __name__ == "__main__":
    main()
