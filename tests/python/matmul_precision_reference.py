"""Python Fabric's TF32 hint decision, for tests/unit/accelerators_test.cpp.

Runs lightning's `_check_cuda_matmul_precision` without a GPU: the CUDA queries it makes are
replaced by stand-ins reporting compute capability MAJOR.0 and the given float32 matmul precision.
Prints one line per case, "MAJOR PRECISION : 0|1", then "message : TEXT" for the device name
"Fake GPU" (what it printed for capability 8 and "highest").
"""

from unittest import mock

import torch
from lightning.fabric.accelerators import cuda as fabric_cuda

check = fabric_cuda._check_cuda_matmul_precision.__wrapped__  # without its lru_cache
device = torch.device("cuda", 0)
message = None
for major in (5, 6, 7, 8, 9, 10, 12):
    for precision in ("highest", "high", "medium"):
        shown = []
        with mock.patch.object(torch.cuda, "is_available", return_value=True), \
                mock.patch.object(torch.cuda, "get_device_capability", return_value=(major, 0)), \
                mock.patch.object(torch.cuda, "get_device_name", return_value="Fake GPU"), \
                mock.patch.object(torch, "get_float32_matmul_precision", return_value=precision), \
                mock.patch.object(fabric_cuda, "rank_zero_info", side_effect=shown.append):
            check(device)
        print(f"{major} {precision} : {int(bool(shown))}")
        if shown:
            message = shown[0]
print(f"message : {message}")
