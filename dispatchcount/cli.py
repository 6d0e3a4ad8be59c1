"""python -m dispatchcount package.module:factory --input-shape 1,3,224,224 [options]

Builds the model with ``factory()``, runs it on random inputs of the given shapes under FlopMode
and prints the table (or, with --json, the full report).

Every mistake of the user (in the command line, in what it points to, in the inputs it asks
for, an input larger than the memory included) is one line on stderr, ``dispatchcount: error:
...``, and a non-zero exit: 2 for the command line itself (argparse's convention), 1 for the
rest. ``--traceback`` shows the full traceback of the latter.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
import traceback
from pathlib import Path
from math import prod
from typing import Any, Callable, NoReturn, Optional, Sequence

import torch

from dispatchcount.devices import devices
from dispatchcount.mode import FlopMode
from dispatchcount.records import RECORDABLE
from dispatchcount.registry import CONVENTIONS
from dispatchcount import report_html

_DTYPES = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "float64": torch.float64, "int64": torch.int64, "int32": torch.int32,
}


class UserError(Exception):
    """A mistake in the command line or in what it points to: one line, no traceback."""


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (no usage block): ``dispatchcount: error: ...``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"dispatchcount: error: {message} (see --help)\n")


def _one_line(error: BaseException) -> str:
    """An exception as ``Type: first line of its message`` (PyTorch appends C++ context lines)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0].strip()}" if lines else type(error).__name__


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(size < 0 for size in shape):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated non-negative integers such as 1,3,224,224, got {text!r}"
        )
    return shape


def parse_metrics(text: str) -> tuple[str, ...]:
    metrics = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [m for m in metrics if m not in RECORDABLE]
    if not metrics or unknown:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated metrics among {', '.join(RECORDABLE)} (e.g. flops,bytes), got {text!r}"
        )
    return metrics


def load_factory(target: str) -> Callable[[], Any]:
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"model must be given as 'package.module:factory', got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UserError(f"cannot import module {module_name!r}: {error}") from error
    except Exception as error:  # the module itself is broken (SyntaxError, an error at import)
        raise UserError(f"importing module {module_name!r} raised {_one_line(error)}") from error
    factory: Any = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise UserError(f"module {module_name!r} has no attribute {attr!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise UserError(f"{target!r} is not callable: expected a function or class returning an nn.Module")
    return factory


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m dispatchcount",
        description="Count the FLOPs of a PyTorch model, per module and operator, at dispatch level.",
    )
    parser.add_argument("model", help="'package.module:factory': a callable returning the nn.Module")
    parser.add_argument("--input-shape", type=parse_shape, action="append", required=True, metavar="N,C,...",
                        help="shape of one model input; repeat for several inputs")
    parser.add_argument("--input-dtype", choices=sorted(_DTYPES), default="float32",
                        help="dtype of the inputs (integer inputs are zeros, e.g. token ids)")
    parser.add_argument("--depth", type=non_negative_int, default=3, help="module depth shown in the table (default 3)")
    parser.add_argument("--convention", choices=tuple(CONVENTIONS), default="flop")
    parser.add_argument("--attention", choices=("dense", "effective"), default="dense",
                        help="dense: every (query, key) score; effective: only the pairs the mask keeps")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or meta (meta: no memory, no data)")
    parser.add_argument("--backward", action="store_true", help="also count the backward of output.sum()")
    parser.add_argument("--train", action="store_true", help="count in train mode (default: eval)")
    parser.add_argument("--metrics", type=parse_metrics, default=("flops",), metavar="flops,bytes[,time]",
                        help="what to record: flops (default), bytes (read and written per op), "
                        "time (measured seconds per op)")
    parser.add_argument("--device-spec", choices=sorted(devices), metavar="NAME",
                        help="add intensity, estimated time and bound columns for this accelerator "
                        f"(records bytes too): {', '.join(devices)}")
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    parser.add_argument("--html", metavar="PATH", help="also write the interactive HTML report to PATH")
    parser.add_argument("--traceback", action="store_true", help="show full tracebacks of errors")
    return parser


def _make_input(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A random (floating point) or zero (integer) input; a UserError if it cannot be allocated."""
    try:
        if dtype.is_floating_point:
            return torch.randn(shape, dtype=dtype, device=device)
        return torch.zeros(shape, dtype=dtype, device=device)
    except (RuntimeError, MemoryError) as error:  # torch.OutOfMemoryError is a RuntimeError
        raise UserError(
            f"--input-shape {','.join(map(str, shape))}: cannot allocate an input of "
            f"{_gib(prod(shape) * dtype.itemsize)} on {device}: {_one_line(error)}"
        ) from error


def _check_fits(what: str, size: int, device: torch.device) -> None:
    """A UserError if ``size`` bytes on the CPU exceed the memory available: allocating them
    would end in the kernel's out-of-memory killer, not in an error."""
    if device.type != "cpu":
        return
    available = _available_memory()
    if available is not None and size > available:
        raise UserError(
            f"{what}: {_gib(size)} needed, more than the {_gib(available)} of memory available; "
            "use --device meta to count without memory"
        )


def _model_bytes(factory: Callable[[], Any]) -> Optional[int]:
    """Bytes of the parameters and buffers ``factory()`` builds, measured on the meta device
    (no memory); None when the factory cannot build there."""
    try:
        with torch.device("meta"):
            probe = factory()
        tensors = [*probe.parameters(), *probe.buffers()]
    except Exception:
        return None
    return sum(t.numel() * t.element_size() for t in tensors)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _gib(size: int) -> str:
    return f"{size / 2**30:.3g} GiB"


def _available_memory() -> Optional[int]:
    """Bytes of memory the system can still give (MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def count(args: argparse.Namespace) -> FlopMode:
    factory = load_factory(args.model)
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        raise UserError(f"--device: {_one_line(error)}") from error
    backend = getattr(torch, device.type, None)
    if device.type not in ("cpu", "meta") and hasattr(backend, "is_available") and not backend.is_available():
        raise UserError(f"--device {args.device}: no {device.type} device is available here (try cpu or meta)")
    dtype = _DTYPES[args.input_dtype]
    for shape in args.input_shape:
        _check_fits(f"--input-shape {','.join(map(str, shape))}: an input of {_dtype_name(dtype)}",
                    prod(shape) * dtype.itemsize, device)
    if device.type == "cpu":
        model_bytes = _model_bytes(factory)
        if model_bytes is not None:
            _check_fits(f"the parameters and buffers of {args.model}()", model_bytes, device)
    try:
        with device:
            model = factory()
    except Exception as error:
        raise UserError(f"{args.model}() raised {_one_line(error)}") from error
    if not isinstance(model, torch.nn.Module):
        raise UserError(f"{args.model}() returned {type(model).__name__}, expected a torch.nn.Module")
    model.train(args.train)
    inputs = [_make_input(shape, dtype, device) for shape in args.input_shape]
    grad = contextlib.nullcontext() if args.backward else torch.no_grad()
    metrics = args.metrics + (("bytes",) if args.device_spec else ())
    if args.device_spec and args.convention != "flop":
        raise UserError(f"--device-spec needs FLOPs: use --convention flop, not {args.convention!r}")
    with FlopMode(model, convention=args.convention, metrics=metrics,
                  attention=args.attention) as mode, grad:
        try:
            output = model(*inputs)
            if args.backward:
                loss = sum(t.float().sum() for t in torch.utils._pytree.tree_leaves(output)
                           if isinstance(t, torch.Tensor) and t.requires_grad)
                if not isinstance(loss, torch.Tensor):
                    raise UserError("--backward: the model's output has no tensor that requires grad")
                loss.backward()
        except UserError:
            raise
        except Exception as error:
            shapes = ", ".join(str(tuple(s)) for s in args.input_shape)
            raise UserError(f"running the model on inputs of shape {shapes} raised {_one_line(error)}") from error
    return mode


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.html and not Path(args.html).resolve().parent.is_dir():
            raise UserError(f"--html: the folder of {args.html!r} does not exist")
        mode = count(args)
    except UserError as error:
        if args.traceback:
            traceback.print_exc()
        print("dispatchcount: error: " + " ".join(str(error).split()), file=sys.stderr)
        return 1
    if args.html:
        try:
            Path(args.html).write_text(report_html.page(mode.counts(), title=f"dispatchcount: {args.model}"), encoding="utf-8")
        except OSError as error:
            print(f"dispatchcount: error: --html: cannot write {args.html!r}: {error.strerror}", file=sys.stderr)
            return 1
        print(f"dispatchcount: HTML report written to {args.html}", file=sys.stderr)
    if args.json:
        print(json.dumps(mode.to_dict(device=args.device_spec), indent=2))
    else:
        print(mode.table(depth=args.depth, device=args.device_spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
