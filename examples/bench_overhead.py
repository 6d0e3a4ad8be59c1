"""Per-op overhead of FlopMode against a plain run, a no-op TorchDispatchMode and FlopCounterMode.

    python examples/bench_overhead.py [--blocks 24] [--repeats 20]
    python examples/bench_overhead.py --instructions [--blocks 4]

R1 = FlopMode's added cost per op / a no-op TorchDispatchMode's (goal <= 1.3).
``--instructions`` counts executed instructions instead of seconds, under valgrind's callgrind
(``apt-get install valgrind``): the same figure whatever else the machine is doing, so R1 can
be compared across runs on a busy machine. It takes a few minutes.

A small-op-heavy model (tiny transformer blocks, d=16, batch 1, one thread) makes the per-op
cost of each mode dominate. FlopMode is timed with the default metrics, with
``metrics=("flops", "bytes")`` and with ``("flops", "time")`` (the timer's own cost). Also
times counting a Llama-7B-shaped forward on the meta device. All figures come from one run, so
their ratios are comparable.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dispatchcount import FlopMode  # noqa: E402
from examples.llama import llama_7b  # noqa: E402


class NoOpMode(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


class OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


class TinyBlock(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


def best_time(step: Callable[[], Any], context: Callable[[], Any], repeats: int,
              clock: Callable[[], float] = time.perf_counter) -> float:
    """Median seconds of ``step`` run inside a fresh ``context()``, after one warm-up."""
    times = []
    for i in range(repeats + 1):
        start = clock()
        with context():
            step()
        if i:
            times.append(clock() - start)
    return statistics.median(times)


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


# Under callgrind, collection is on only inside ffi_call: calling a ctypes function pointer
# to a Python callback is one, so each measured region is one such call, dumped on its own.
_REGION = ctypes.CFUNCTYPE(None)


def measured_regions(model: nn.Module, step: Callable[[], None], modes: dict) -> None:
    """Run two steps of ``step`` under each mode, each mode in one ctypes-call region."""
    for context in modes.values():
        with context():
            step()  # warm-up, outside the region

        def region(context=context) -> None:
            for _ in range(2):
                with context():
                    step()

        _REGION(region)()


def count_instructions(args: argparse.Namespace, ops: int, names: list[str]) -> None:
    if shutil.which("valgrind") is None:
        sys.exit("--instructions needs valgrind (apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "cg")
        cmd = ["valgrind", "--tool=callgrind", "--collect-atstart=no", "--toggle-collect=ffi_call",
               "--dump-after=ffi_call", f"--callgrind-out-file={out}", sys.executable, __file__,
               "--blocks", str(args.blocks), "--in-callgrind"]
        print(f"running {len(names)} modes under callgrind (a few minutes) ...", flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        counts = []
        for part in sorted(glob.glob(out + ".*"), key=lambda p: int(p.rsplit(".", 1)[1])):
            total = int(re.search(r"^summary: (\d+)", open(part).read(), re.M).group(1))
            if total:
                counts.append(total)
    if len(counts) != len(names):
        sys.exit(f"expected {len(names)} measured regions, found {len(counts)}")
    per_op = {name: count / (2 * ops) for name, count in zip(names, counts)}
    plain = per_op["plain"]
    print(f"aten ops per step: {ops}; instructions per op (2 steps per mode):")
    print(f"{'mode':<26}{'instr/op':>12}{'added':>12}")
    for name, value in per_op.items():
        print(f"{name:<26}{value:>12.0f}{value - plain:>12.0f}")
    noop = per_op["no-op TorchDispatchMode"] - plain
    for name in names[2:]:
        goal = "1.8" if "bytes" in name else "1.3"
        print(f"R1 {name}: {(per_op[name] - plain) / noop:.3f}   (goal <= {goal})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-llama", action="store_true", help="skip the meta Llama-7B timing")
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions under valgrind instead of timing (deterministic)")
    parser.add_argument("--in-callgrind", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--clock", choices=("wall", "thread"), default="wall",
                        help="wall: perf_counter; thread: this thread's CPU time (steadier on a loaded machine)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")

    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    model = nn.Sequential(*[TinyBlock(16) for _ in range(args.blocks)])
    x = torch.randn(1, 8, 16)

    def step() -> None:
        model(x).sum().backward()

    with OpCounter() as counter:
        step()
    ops = counter.ops

    instruction_modes = {
        "plain": _Null,
        "no-op TorchDispatchMode": NoOpMode,
        "FlopMode": lambda: FlopMode(model),
        "FlopMode flops+bytes": lambda: FlopMode(model, metrics=("flops", "bytes")),
    }
    if args.in_callgrind:
        measured_regions(model, step, instruction_modes)
        return
    if args.instructions:
        count_instructions(args, ops, list(instruction_modes))
        return

    modes: dict[str, Callable[[], Any]] = {
        "plain": _Null,
        "no-op TorchDispatchMode": NoOpMode,
        "FlopCounterMode": lambda: FlopCounterMode(display=False),
        "FlopMode": lambda: FlopMode(model),
        "FlopMode flops+bytes": lambda: FlopMode(model, metrics=("flops", "bytes")),
        "FlopMode flops+time": lambda: FlopMode(model, metrics=("flops", "time")),
    }
    # Interleave the modes over rounds so drift in machine speed hits them alike.
    samples: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(3):
        for name, context in modes.items():
            samples[name].append(best_time(step, context, args.repeats, clock))
    seconds = {name: min(values) for name, values in samples.items()}

    plain = seconds["plain"]
    added = {name: (t - plain) / ops * 1e6 for name, t in seconds.items()}
    print(f"model: {args.blocks} tiny transformer blocks (d=16, batch 1, 1 thread), forward+backward")
    print(f"aten ops per step: {ops}")
    print(f"{'mode':<26}{'ms/step':>10}{'added us/op':>14}")
    for name, t in seconds.items():
        print(f"{name:<26}{t * 1e3:>10.2f}{added[name]:>14.2f}")
    noop, fcm, ours = added["no-op TorchDispatchMode"], added["FlopCounterMode"], added["FlopMode"]
    print(f"R1 = FlopMode added per op / no-op mode's: {ours / noop:.2f}x   (goal <= 1.3x)")
    print(f"FlopMode added per op / FlopCounterMode's: {ours / fcm:.3f}   (goal <= 0.2)")
    with_bytes, with_time = added["FlopMode flops+bytes"], added["FlopMode flops+time"]
    print(f"FlopMode flops+bytes added per op / no-op mode's: {with_bytes / noop:.2f}x   (goal <= 1.8x)")
    print(f"FlopMode flops+time added per op / no-op mode's: {with_time / noop:.2f}x   (timer cost: "
          f"{with_time - ours:.2f} us/op over the default)")

    if args.no_llama:
        return
    with torch.device("meta"):
        llama = llama_7b()
        tokens = torch.zeros(1, 2048, dtype=torch.long)
    timings = {}
    for name, context in (("FlopCounterMode", lambda: FlopCounterMode(display=False)), ("FlopMode", lambda: FlopMode(llama))):
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            with context() as counter, torch.no_grad():
                llama(tokens)
            runs.append(time.perf_counter() - start)
        timings[name] = (min(runs), counter)
    fcm_total = timings["FlopCounterMode"][1].get_total_flops()
    ours_total = timings["FlopMode"][1].total()
    print("Llama-7B shapes on meta, forward of 1x2048 tokens:")
    for name, (t, _) in timings.items():
        print(f"  {name:<18}{t * 1e3:>9.1f} ms")
    print(f"  FlopMode / FlopCounterMode time: {timings['FlopMode'][0] / timings['FlopCounterMode'][0]:.2f}x   (goal <= 1)")
    print(f"  FLOPs: FlopMode {ours_total / 1e12:.2f} T (all ops), FlopCounterMode {fcm_total / 1e12:.2f} T (matmul/attention)")


if __name__ == "__main__":
    main()
