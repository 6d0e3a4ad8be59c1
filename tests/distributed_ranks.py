"""One rank of tests/test_distributed.py: ``python distributed_ranks.py RANK PORT OUTDIR``.

Joins a 2-rank gloo group on 127.0.0.1:PORT, counts every scenario under FlopMode (strict on
rank 0 only) and writes what it measured to OUTDIR/rank{RANK}.json. The test derives the
expected numbers by hand; this file only measures (importing it does nothing else: the test
shares its model).
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DeviceMesh, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
from torch.nn.parallel import DistributedDataParallel

import dispatchcount
from dispatchcount import FlopMode, report

WORLD = 2
BATCH, DIM, HIDDEN = 4, 16, 32
RANK = 0
STRICT = True  # strict on rank 0 only: it must neither raise nor leave the other rank blocked


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(DIM, HIDDEN)
        self.down = nn.Linear(HIDDEN, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


def measured(fm: FlopMode) -> dict:
    return {
        "total": fm.total(),
        "forward": fm.total("forward"),
        "by_operator": fm.by_operator(),
        "comm_bytes": fm.by_operator(metric="comm_bytes"),
        "by_module": fm.by_module(),
        "unsupported": fm.unsupported_ops(),
    }


def local_batch() -> torch.Tensor:
    """This rank's batch: rows RANK*BATCH .. of one global batch of WORLD*BATCH rows."""
    torch.manual_seed(0)
    return torch.randn(WORLD * BATCH, DIM)[RANK * BATCH:(RANK + 1) * BATCH]


def dtensor_matmul(mesh: DeviceMesh) -> dict:
    torch.manual_seed(0)
    a, b = torch.randn(8, 6), torch.randn(6, 4)
    rows = distribute_tensor(a, mesh, [Shard(0)]) @ distribute_tensor(b, mesh, [Replicate()])
    plain = rows.to_local().clone()
    with FlopMode(strict=STRICT) as fm:  # cold: the first call of each op propagates its sharding
        rows = distribute_tensor(a, mesh, [Shard(0)]) @ distribute_tensor(b, mesh, [Replicate()])
    result = {"rows": measured(fm), "rows_bit_identical": torch.equal(rows.to_local(), plain)}
    with FlopMode(strict=STRICT) as fm:
        inner = distribute_tensor(a, mesh, [Shard(1)]) @ distribute_tensor(b, mesh, [Shard(0)])  # Partial
        full = inner.full_tensor()  # the partial sums all-reduced
    result["inner"] = measured(fm)
    result["inner_exact"] = torch.allclose(full, a @ b, atol=1e-6)
    with FlopMode(convention="fvcore", strict=STRICT) as fm:
        distribute_tensor(a, mesh, [Shard(0)]) @ distribute_tensor(b, mesh, [Replicate()])
    result["fvcore_rows"] = measured(fm)
    return result


def ddp() -> dict:
    torch.manual_seed(0)
    model = DistributedDataParallel(MLP())
    x = local_batch()
    with torch.no_grad():
        plain = model(x)
    with FlopMode(model, strict=STRICT) as fm:
        out = model(x)
        out.sum().backward()
    return {"step": measured(fm), "bit_identical": torch.equal(out.detach(), plain)}


def fsdp(mesh: DeviceMesh) -> dict:
    torch.manual_seed(0)
    model = MLP()
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = []
    for _ in range(2):  # the first step propagates DTensor shardings, the second hits the cache
        with FlopMode(model, strict=STRICT) as fm:
            model(local_batch()).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
        steps.append(measured(fm))
    return {"steps": steps}


def tensor_parallel(mesh: DeviceMesh) -> dict:
    torch.manual_seed(0)
    model = parallelize_module(MLP(), mesh, {"up": ColwiseParallel(), "down": RowwiseParallel()})
    torch.manual_seed(1)
    x = torch.randn(BATCH, DIM)  # the same batch on every rank
    with torch.no_grad():
        plain = model(x)
    steps = []
    for _ in range(2):
        with FlopMode(model, strict=STRICT) as fm:
            out = model(x)
            out.sum().backward()
        steps.append(measured(fm))
        model.zero_grad()
    reduced = dispatchcount.distributed.reduce(fm)
    return {
        "steps": steps,
        "bit_identical": torch.equal(out.detach(), plain),
        "reduced": {
            "total": reduced.total(),
            "by_module": reduced.by_module(),
            "by_operator": reduced.by_operator(),
            "comm_bytes": reduced.total(metric="comm_bytes"),
            "calls": dict(reduced.calls),
            "params": dict(reduced.params),
            "table": report.table(reduced, 2),
        },
    }


class Two(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(DIM, DIM)
        self.b = nn.Linear(DIM, DIM)


def uneven() -> dict:
    """Rank 0 runs module a, rank 1 runs a and b: reduce keeps what only one rank saw."""
    model = Two()
    with FlopMode(model) as fm:
        model.a(torch.randn(BATCH, DIM))
        if RANK == 1:
            model.b(torch.randn(BATCH, DIM))
    reduced = dispatchcount.distributed.reduce(fm)
    return {"by_module": reduced.by_module(), "uncalled": sorted(reduced.uncalled), "calls": dict(reduced.calls)}


def main() -> None:
    global RANK, STRICT
    RANK, port, outdir = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    STRICT = RANK == 0
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    # A collective that waits for a rank that is gone fails in 60 s (the test kills us sooner).
    dist.init_process_group("gloo", rank=RANK, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    warnings.simplefilter("ignore")  # PyTorch's own warnings about gloo, FSDP on CPU ...
    mesh = DeviceMesh("cpu", list(range(WORLD)))
    results = {
        "dtensor_matmul": dtensor_matmul(mesh),
        "ddp": ddp(),
        "fsdp": fsdp(mesh),
        "tp": tensor_parallel(mesh),
        "uneven": uneven(),
    }
    (outdir / f"rank{RANK}.json").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
