"""Counting under torch.distributed: each rank counts what it computes.

Two gloo ranks on 127.0.0.1 (tests/distributed_ranks.py, started and killed here, bounded in
time) run DDP, FSDP2 ``fully_shard``, tensor parallelism (``parallelize_module`` with
Colwise/Rowwise) and DTensor matmuls under FlopMode, strict on rank 0 only. Every expected
number below is derived by hand from the model's sizes and the documented costs
(docs/conventions.md): a matmul of (m, k) by (k, n) is 2 m k n, ReLU and its backward 1 per
element, a sum 1 per input element, ``add`` with an ``alpha`` 2 per element, a collective 0 FLOPs
and its payload in ``comm_bytes``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

import dispatchcount
from dispatchcount import FlopMode, report
from dispatchcount.distributed import merge
from dispatchcount.formulas.communication import COLLECTIVE_NAMESPACES, COMMUNICATION_RULES
from dispatchcount.registry import Transfer, explain, resolve

if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
    pytest.skip("this torch build has no torch.distributed with the gloo backend", allow_module_level=True)

import distributed_ranks  # noqa: E402  (the ranks' program; importing it starts nothing)
from distributed_ranks import MLP  # noqa: E402

WORKER = Path(distributed_ranks.__file__)
DEADLINE_S = 150  # both ranks, hard: killed past it (a run takes ~10 s on 2 idle cores)
# ranks; rows per rank; the MLP's Linear(D, H), ReLU, Linear(H, D)
W, N, D, H = distributed_ranks.WORLD, distributed_ranks.BATCH, distributed_ranks.DIM, distributed_ranks.HIDDEN
P = D * H + H + H * D + D  # parameters: 1072
F32 = 4  # bytes


def mlp_step(n: int) -> Counter:
    """FLOPs by operator of one forward and backward of ``mlp(x).sum()`` on n rows (x needs no grad).

    Forward: two addmm (2 n D H each), ReLU (n H), the loss sum (n D). Backward: down's input
    and weight gradients and up's weight gradient (three mm of 2 n D H), ReLU's backward (n H),
    the bias gradients (sums of n D and n H elements)."""
    return Counter({
        "aten.addmm": 2 * 2 * n * D * H,
        "aten.mm": 3 * 2 * n * D * H,
        "aten.relu": n * H,
        "aten.threshold_backward": n * H,
        "aten.sum": n * D + n * D + n * H,
    })


def summed(ranks: list[dict], *path: str) -> Counter:
    total: Counter = Counter()
    for rank in ranks:
        value = rank
        for key in path:
            value = value[key]
        total.update(value)
    return total


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Start both ranks, wait for them (killed past the deadline), return what each measured."""
    out = tmp_path_factory.mktemp("ranks")
    port = str(_free_port())
    logs = [open(out / f"rank{r}.log", "w+") for r in range(W)]
    procs = [
        subprocess.Popen([sys.executable, str(WORKER), str(r), port, str(out)], stdout=logs[r], stderr=subprocess.STDOUT)
        for r in range(W)
    ]
    deadline = time.monotonic() + DEADLINE_S
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        hung = [r for r, proc in enumerate(procs) if proc.poll() is None]
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read()[-3000:])
        log.close()
    assert not hung, f"ranks {hung} still running after {DEADLINE_S} s (killed):\n" + "\n".join(outputs)
    for r, proc in enumerate(procs):
        assert proc.returncode == 0, f"rank {r} exited with {proc.returncode}:\n{outputs[r]}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(W)]


def test_the_single_process_reference_is_the_hand_count():
    model = MLP()
    with FlopMode(model) as fm:
        model(torch.randn(W * N, D)).sum().backward()
    assert Counter(fm.by_operator()) == mlp_step(W * N)
    assert fm.total() == 10 * W * N * D * H + 3 * W * N * H + 2 * W * N * D == 41_984


def test_ddp_sums_to_the_single_process_count_plus_gradient_averaging(ranks):
    # Each rank: its own 4 rows forward and backward, and DDP's averaging of its P gradients
    # (one multiply by 1 / W each). Summed: the 8-row single-process step plus W P multiplies.
    assert summed(ranks, "ddp", "step", "by_operator") == mlp_step(W * N) + Counter({"aten.mul": W * P})
    for rank in ranks:
        assert rank["ddp"]["step"]["comm_bytes"] == {"c10d.allreduce_": P * F32}  # one bucket: 4288
        assert rank["ddp"]["step"]["by_module"]["module.up"] == 2 * 2 * N * D * H + N * H  # addmm, weight grad, bias grad
        assert rank["ddp"]["bit_identical"]


def test_fsdp2_sums_to_the_single_process_step(ranks):
    # Forward and backward with the all-gathered parameters on each rank's rows; SGD's
    # p.add_(g, alpha=-lr) on each rank's shard (2 FLOPs per element, each element on one rank).
    for step in (0, 1):  # the first step propagates DTensor shardings; the second hits the cache
        assert summed(ranks, "fsdp", "steps", step, "by_operator") == mlp_step(W * N) + Counter({"aten.add_": 2 * P})
    for rank in ranks:
        first, second = rank["fsdp"]["steps"]
        assert first == second
        assert first["comm_bytes"] == {
            "c10d._allgather_base_": P // W * F32,  # its shard of the parameters: 2144
            "c10d._reduce_scatter_base_": P * F32,  # all of its gradients: 4288
        }


def test_tensor_parallel_counts_local_shards_and_replicated_work_on_every_rank(ranks):
    # Every rank has the same 4 rows. Sharded work (up's columns, down's rows: matmuls, ReLU,
    # up's bias gradient) is split: it sums to the single-process count. Replicated work runs
    # on both ranks and is counted on both: the loss sum and down's bias gradient (n D each),
    # and RowwiseParallel's split of down's bias into W partial sums (a divide of D elements).
    replicated = Counter({"aten.sum": (W - 1) * (N * D + N * D), "aten.div": W * D})
    for step in (0, 1):
        assert summed(ranks, "tp", "steps", step, "by_operator") == mlp_step(N) + replicated
    for rank in ranks:
        first, second = rank["tp"]["steps"]
        assert first == second
        assert first["by_operator"]["aten.addmm"] == 2 * 2 * N * D * (H // W)  # local shards: 4096
        assert first["comm_bytes"] == {"_c10d_functional.all_reduce": N * D * F32}  # down's partial sums
        assert rank["tp"]["bit_identical"]


def test_dtensor_matmul_counts_the_local_products(ranks):
    m, k, n = 8, 6, 4
    for case in ("rows", "inner"):  # Shard(0) @ Replicate; Shard(1) @ Shard(0) (partial sums)
        assert summed(ranks, "dtensor_matmul", case, "by_operator") == {"aten.mm": 2 * m * k * n}
        for rank in ranks:
            assert rank["dtensor_matmul"][case]["total"] == 2 * m * k * n // W
    assert summed(ranks, "dtensor_matmul", "fvcore_rows", "by_operator") == {"aten.mm": m * k * n}
    # distribute_tensor: rank 0 scatters A (m k floats) and broadcasts B (k n floats); receivers send nothing.
    zero, one = (rank["dtensor_matmul"] for rank in ranks)
    assert zero["rows"]["comm_bytes"] == {"c10d.scatter_": m * k * F32, "c10d.broadcast_": k * n * F32}
    assert one["rows"]["comm_bytes"] == {}
    assert one["inner"]["comm_bytes"] == {"_c10d_functional.all_reduce": m * n * F32}  # full_tensor()
    assert zero["rows_bit_identical"] and one["rows_bit_identical"]
    assert zero["inner_exact"] and one["inner_exact"]


def test_strict_on_one_rank_neither_raises_nor_blocks(ranks):
    # Rank 0 counted every scenario with strict=True and exited 0 (the fixture checks it, and
    # that no rank had to be killed); rank 1 (strict=False) saw nothing uncounted either.
    for rank in ranks:
        for scenario in ("ddp", "fsdp", "tp", "dtensor_matmul"):
            for measured in _measurements(rank[scenario]):
                assert measured["unsupported"] == {}, scenario


def _measurements(value):
    if isinstance(value, dict):
        if "unsupported" in value:
            yield value
        else:
            for v in value.values():
                yield from _measurements(v)
    elif isinstance(value, list):
        for v in value:
            yield from _measurements(v)


def test_reduce_gives_every_rank_the_global_counts(ranks):
    zero, one = (rank["tp"]["reduced"] for rank in ranks)
    assert zero == one
    per_rank = [rank["tp"]["steps"][1] for rank in ranks]
    assert zero["total"] == sum(m["total"] for m in per_rank) == sum(mlp_step(N).values()) + 2 * D * (W - 1) * N + W * D
    assert Counter(zero["by_module"]) == summed(ranks, "tp", "steps", 1, "by_module")
    assert zero["comm_bytes"] == W * N * D * F32
    assert zero["calls"] == {"": W, "up": W, "down": W}  # forward calls, summed
    assert zero["params"] == {"": P, "up": D * H + H, "down": H * D + D}  # global, not times W
    first_row = zero["table"].splitlines()[3].split()
    assert first_row[0] == "model" and first_row[4] == report.human(zero["total"])


def test_reduce_keeps_what_only_some_ranks_ran(ranks):
    # Rank 0 ran module a, rank 1 ran a and b (Linear(D, D) on N rows each: 2 N D D).
    for rank in ranks:
        uneven = rank["uneven"]
        assert uneven["by_module"] == {"": 3 * 2 * N * D * D, "a": W * 2 * N * D * D, "b": 2 * N * D * D}
        assert uneven["calls"] == {"a": W, "b": 1}
        assert uneven["uncalled"] == [""]  # no rank called the root itself


# -- without processes ------------------------------------------------------------------------


def _collective_ops() -> list:
    import torch.distributed.fsdp  # noqa: F401  (registers the fsdp ops)

    ops = []
    for qualified in sorted(torch._C._dispatch_get_all_op_names()):
        namespace, _, name = qualified.partition("::")
        if namespace in COLLECTIVE_NAMESPACES:
            base, _, overload = name.partition(".")
            ops.append(getattr(getattr(getattr(torch.ops, namespace), base), overload or "default"))
    return ops


def test_every_collective_and_fsdp_copy_op_has_a_reviewed_rule():
    ops = _collective_ops()
    assert {op.namespace for op in ops} == set(COLLECTIVE_NAMESPACES)
    for convention in ("flop", "fvcore"):
        kinds = {str(op): explain(op, convention).kind for op in ops}
        assert "unsupported" not in kinds.values(), [op for op, kind in kinds.items() if kind == "unsupported"]
    assert explain(torch.ops.fsdp.copy_.default).reason.startswith("zero by communication")
    assert explain(torch.ops._c10d_functional.wait_tensor.default).reason.startswith("zero by communication")
    assert explain(torch.ops.c10d_functional.all_reduce.default).kind == "decompose"  # into _c10d_functional


class _Group:
    def __init__(self, rank: int) -> None:
        self._rank = rank

    def rank(self) -> int:
        return self._rank


def test_collective_payloads_are_what_the_rank_contributes():
    x = torch.ones(3, 4)  # 48 bytes
    all_gather = resolve(torch.ops._c10d_functional.all_gather_into_tensor.default)
    assert all_gather(x, 2, "g", out=torch.ones(6, 4)).nbytes == 48  # its shard, not the gathered result
    reduce_scatter = resolve(torch.ops.c10d._reduce_scatter_base_.default)
    assert reduce_scatter(torch.ones(2), x, None, None, out=None).nbytes == 48  # its whole input
    allreduce = resolve(torch.ops.c10d.allreduce_.default)
    assert allreduce([x, x.double()], None, None, None, out=None).nbytes == 48 + 96
    broadcast = resolve(torch.ops.c10d.broadcast_.default)
    assert broadcast([x], _Group(0), 0, 0, out=None).nbytes == 48  # the root sends
    assert broadcast([x], _Group(1), 0, 0, out=None).nbytes == 0  # the others receive
    assert resolve(torch.ops.c10d.recv_.default)([x], None, 0, 0, out=None).nbytes == 0
    batch = COMMUNICATION_RULES["_c10d_functional"]["batch_p2p_ops"]  # the op is new in torch 2.13
    assert batch(["isend", "irecv"], [1, 1], [0, 0], [x, torch.ones(100)], "g", out=None).nbytes == 48
    assert isinstance(allreduce([x], None, None, None, out=None), Transfer)


def test_communication_is_a_metric_of_its_own_with_zero_flops():
    counts = merge([_counts_with(comm=[("c10d.allreduce_", 4288)])])
    assert counts.total() == 0 and counts.total(metric="comm_bytes") == 4288
    assert counts.by_operator(metric="comm_bytes") == {"c10d.allreduce_": 4288}
    assert counts.operator_calls() == {"c10d.allreduce_": 1}


def _counts_with(comm=()) -> dispatchcount.Counts:
    from dispatchcount.records import COMM_BYTES, SLOTS, Row

    rows = []
    for op, nbytes in comm:
        values = [0] * len(SLOTS)
        values[1], values[COMM_BYTES] = 1, nbytes
        rows.append(Row(("",), "", op, "backward", "float32", None, tuple(values)))
    return dispatchcount.Counts(convention="flop", unit="FLOPs", rows=tuple(rows), modules=("",), params={},
                                calls={}, classes={}, has_model=False, model_ran=True, unsupported={},
                                errors={}, uncalled=frozenset())


class Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)


@torch.library.custom_op("dctest_dist::uncounted", mutates_args=())
def _uncounted(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


def test_merge_sums_rows_and_keeps_names_only_some_ranks_saw():
    model = Pair()
    with FlopMode(model) as zero:
        model.a(torch.randn(2, 4))
        torch.ops.dctest_dist.uncounted(torch.randn(3))
    with FlopMode(model) as one:
        model.a(torch.randn(2, 4))
        model.b(torch.randn(2, 4))
        torch.ops.dctest_dist.uncounted(torch.randn(3))
    merged = merge([zero.counts(), one.counts()])
    linear = 2 * 2 * 4 * 4  # addmm of 2 rows
    assert merged.by_module() == {"": 3 * linear, "a": 2 * linear, "b": linear}
    assert merged.by_operator() == {"aten.addmm": 3 * linear}
    assert merged.calls == {"a": 2, "b": 1}
    assert merged.params == {"": 40, "a": 20, "b": 20}  # not summed: every rank holds the model
    assert merged.uncalled == {""}  # b ran on one rank: called
    assert merged.unsupported == {"dctest_dist.uncounted": 2}
    assert merged.extras["ranks"] == 2
    lines = report.table(merged, 1).splitlines()
    # only a and b were called, on either rank: the root is everything counted, and says so
    assert lines[1].startswith("warning: the model given to FlopMode never ran its forward")
    root_row = lines[4].split()  # module, params, forward, %
    assert root_row[:3] == ["(all)", "40", report.human(3 * linear)]
    with FlopMode(convention="fvcore") as other:
        pass
    with pytest.raises(ValueError, match="different conventions"):
        merge([zero.counts(), other.counts()])


def test_reduce_needs_an_initialized_process_group():
    with FlopMode() as fm:
        pass
    with pytest.raises(RuntimeError, match="initialized torch.distributed process group"):
        dispatchcount.distributed.reduce(fm)
    with pytest.raises(TypeError, match="FlopMode or a Counts"):
        dispatchcount.distributed._counts_of(object())
