"""Writes the seed corpus under fuzz/corpus/ (run with the bootstrapped venv's python):
torch.save files and their data.pkl records, CIFAR-10 batch files, SLURM environments."""
import collections, io, os, zipfile
import torch

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    with open(os.path.join(here, target, name), "wb") as f:
        f.write(data)


torch.manual_seed(0)
base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
files = {
    "state_dict": collections.OrderedDict(
        [("fc.weight", torch.randn(2, 3)), ("fc.bias", torch.zeros(2)),
         ("bn.num_batches_tracked", torch.tensor(5))]),
    "fabric": {
        "model": collections.OrderedDict([("w", torch.ones(4)), ("b", torch.zeros(1))]),
        "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(4)}},
                      "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0, 1],
                                        "amsgrad": False, "foreach": None}]},
        "epoch": 7, "name": "run-1", "big": 1 << 40, "neg": -5,
    },
    "views": {"base": base, "row": base[1], "col": base[:, 2], "t": base.t()},
    "dtypes": [torch.ones(2, dtype=d) for d in
               (torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
                torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64)],
    "scalars": (None, True, False, 0, 255, 65536, -1, 2 ** 62, 0.5, "héllo",
                [], {}, (), {1: "a", 2.5: "b", None: "c", True: "d"}),
    "shared": [[1, 2, 3]] * 4,
    "keys50": {f"layer{i}.weight": i for i in range(50)},
}
for name, value in files.items():
    buf = io.BytesIO()
    torch.save(value, buf)
    data = buf.getvalue()
    put("checkpoint_file", name + ".pt", data)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        pkl = [n for n in z.namelist() if n.endswith("/data.pkl")][0]
        put("checkpoint_pickle", name + ".pkl", z.read(pkl))

record = lambda label, fill: bytes([label]) + bytes([fill % 256]) * 3072
put("cifar10", "two_records.bin", record(3, 10) + record(9, 200))
put("cifar10", "bad_label.bin", record(12, 0))
put("cifar10", "truncated.bin", record(1, 1)[:1000])

for i, text in enumerate([
        "node[1-4]\n1234\n2\n2\n1", "a[001,005],b[2-3]\n99\n4\n2\n2", "host1,host2\n12345678\n1",
        "gpu-[01-02]-x y\n7\n1\n1\n1", "single", "n[5]\nabc\n3", "[,]\n-1\n1\n1\n1"]):
    put("slurm", f"env{i}.txt", text.encode())
