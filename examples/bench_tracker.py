"""Cost of FlopMode against a plain run as the number of live module calls grows.

    python examples/bench_tracker.py [--steps 1000,4000,8000] [--repeats 3]

A GRUCell unrolled for T steps, then one backward through the whole sequence: every step is a
top-level module call whose graph stays alive until the backward, so the tracker holds T live
call records while the backward runs. If the tracker's cost per op is constant, the
FlopMode/plain ratio does not grow with T (goal: the ratio at the largest T within 1.2x of the
ratio at the smallest). All figures come from one run, so their ratios are comparable.

The run happens on a thread with a 512 MiB stack: on torch 2.13, freeing a graph whose nodes
were seen from Python (as a FlopMode sees every node its backward runs) recurses once per such
node, and at T=8000 the ~80,000 GRU nodes overflow the default 8 MiB stack (a segfault, with or
without dispatchcount: reading ``grad_fn`` of each step of a 50,000-step chain does the same).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dispatchcount import FlopMode  # noqa: E402


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def unrolled_step(cell: nn.GRUCell, inputs: torch.Tensor) -> None:
    """T calls of ``cell``, then one backward through all of them."""
    h = torch.zeros(inputs.shape[1], cell.hidden_size)
    for x in inputs:
        h = cell(x, h)
    h.sum().backward()


def seconds(step: Callable[[], None], context: Callable[[], Any]) -> float:
    """Seconds of one run of ``step`` inside a fresh ``context()``."""
    start = time.perf_counter()
    with context():
        step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="1000,4000,8000", help="comma-separated sequence lengths T")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    steps = [int(t) for t in args.steps.split(",")]
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    torch.manual_seed(0)

    cell = nn.GRUCell(16, 16)
    sequences = {t: torch.randn(t, 1, 16) for t in steps}
    unrolled_step(cell, sequences[steps[0]])  # warm-up, plain and counted
    with FlopMode(cell):
        unrolled_step(cell, sequences[steps[0]])

    print("GRUCell(16, 16), batch 1, 1 thread: T steps then one backward")
    print(f"{'T':>6}{'plain s':>10}{'FlopMode s':>12}{'FlopMode/plain':>16}")
    ratios = {}
    for t in steps:
        step = lambda: unrolled_step(cell, sequences[t])  # noqa: E731
        plain = counted = float("inf")
        for _ in range(args.repeats):  # interleaved, so that a change in machine load hits both
            plain = min(plain, seconds(step, _Null))
            counted = min(counted, seconds(step, lambda: FlopMode(cell)))
        ratios[t] = counted / plain
        print(f"{t:>6}{plain:>10.3f}{counted:>12.3f}{ratios[t]:>15.2f}x")
    first, last = steps[0], steps[-1]
    print(f"ratio at T={last} / ratio at T={first}: {ratios[last] / ratios[first]:.2f}   (goal <= 1.2)")


def main_on_a_large_stack() -> None:
    threading.stack_size(512 * 2**20)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            main()
        except BaseException as error:  # noqa: BLE001 (re-raised on the main thread)
            failure.append(error)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    if failure:
        raise failure[0]


if __name__ == "__main__":
    main_on_a_large_stack()
