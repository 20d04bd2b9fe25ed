"""A sharded checkpoint cppfabric wrote, consolidated by torch, equals the "full" checkpoint of the
same training (for the sharding tests, tests/distributed/shard_runs.hpp).

    dcp_equals_full.py <sharded dir> <full file> <consolidated out>

Prints "tensors N worst W" and fails unless every tensor of the full checkpoint is in the
consolidated one with the same values, the optimizer param_groups agree, and the directory's
.metadata holds DCP's flattened param_groups keys.
"""

import sys

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save


def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, prefix + str(k) + "."))
        else:
            out[prefix + str(k)] = v
    return out


def main(sharded, full, out):
    dcp_to_torch_save(sharded, out)
    a = flat(torch.load(out, weights_only=True))
    b = flat(torch.load(full, weights_only=True))
    keys = [k for k, v in b.items() if torch.is_tensor(v)]
    missing = [k for k in keys if k not in a]
    assert not missing, missing
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in keys)
    assert a["optimizer.param_groups"] == b["optimizer.param_groups"]
    md = FileSystemReader(sharded).read_metadata().state_dict_metadata
    assert "optimizer.param_groups.0.lr" in md, sorted(md)[:20]  # DCP's flattened keys
    print("tensors", len(keys), "worst", worst)
    assert worst == 0.0


if __name__ == "__main__":
    main(*sys.argv[1:4])
