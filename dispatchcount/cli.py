"""dispatchcount package.module:factory --input-shape 1,3,224,224 [options]

Builds the model with ``factory()`` (imported from the current directory, as ``python -m``
does, or from a ``path/to/file.py``), runs it on random inputs of the given shapes and dtypes
(``--input NAME=SHAPE:DTYPE`` for keyword arguments) under FlopMode and prints the table (or,
with --json, the full report).

Every mistake of the user (in the command line, in what it points to, in the inputs it asks
for, an input larger than the memory included) is one line on stderr, ``dispatchcount: error:
...``, and a non-zero exit: 2 for the command line itself (argparse's convention), 1 for the
rest. ``--traceback`` shows the full traceback of the latter.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import sys
import traceback
from math import prod
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, NoReturn, Optional, Sequence

import torch

from dispatchcount import cli_hints, report_html
from dispatchcount.cli_inputs import make_inputs, parse_dtype, parse_input, parse_input_shape
from dispatchcount.devices import devices
from dispatchcount.mode import FlopMode
from dispatchcount.problems import FormulaError, UnsupportedOperatorError
from dispatchcount.records import RECORDABLE
from dispatchcount.registry import CONVENTIONS


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


def parse_depth(text: str) -> Optional[int]:
    """``--depth``: a non-negative integer, or ``all`` (None: every module)."""
    if text.strip().lower() == "all":
        return None
    try:
        depth = int(text)
    except ValueError:
        depth = -1
    if depth < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer (0: the model alone) or 'all', got {text!r}")
    return depth


def parse_metrics(text: str) -> tuple[str, ...]:
    metrics = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [m for m in metrics if m not in RECORDABLE]
    if not metrics or unknown:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated metrics among {', '.join(RECORDABLE)} (e.g. flops,bytes), got {text!r}"
        )
    return metrics


def load_factory(target: str) -> Callable[[], Any]:
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"model must be given as 'package.module:factory' or 'path/to/file.py:factory', got {target!r}")
    module = _import(module_name)
    factory: Any = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise UserError(f"module {module_name!r} has no attribute {attr!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise UserError(f"{target!r} is not callable: expected a function or class returning an nn.Module")
    return factory


def _import(name: str) -> ModuleType:
    """Module ``name`` as ``python -m`` finds it (the current directory first), or a ``.py`` file
    (its folder on the path, so that it imports its neighbours)."""
    if name.endswith(".py"):
        path = Path(name).resolve()
        if not path.is_file():
            raise UserError(f"cannot import {name!r}: no such file")
        folder = str(path.parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        loaded = sys.modules.get(path.stem)
        if loaded is not None and getattr(loaded, "__file__", None) == str(path):
            return loaded  # already run (main() called twice in one process)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        try:
            spec.loader.exec_module(module)
        except ImportError as error:
            del sys.modules[path.stem]
            raise UserError(f"cannot import {name!r}: {error}") from error
        except Exception as error:  # the file itself is broken (SyntaxError, an error at import)
            del sys.modules[path.stem]
            raise UserError(f"importing {name!r} raised {_one_line(error)}") from error
        return module
    if "" not in sys.path and os.getcwd() not in sys.path:  # the console script's path has no cwd
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise UserError(f"cannot import module {name!r}: {error}") from error
    except Exception as error:  # the module itself is broken (SyntaxError, an error at import)
        raise UserError(f"importing module {name!r} raised {_one_line(error)}") from error


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dispatchcount",
        description="Count the FLOPs of a PyTorch model, per module and operator, at dispatch level.",
        epilog="example: dispatchcount examples.llama:llama_tiny --input input_ids=2,16:int64 --backward",
    )
    parser.add_argument("model", help="'package.module:factory' (imported from the current directory) or "
                        "'path/to/file.py:factory': a callable returning the nn.Module")
    parser.add_argument("--input", dest="inputs", type=parse_input, action="append", default=[],
                        metavar="[NAME=]SHAPE[:DTYPE]",
                        help="one model input, e.g. 1,3,224,224 or input_ids=2,16:int64 (NAME: passed as a "
                        "keyword argument); repeat for several, positional ones in order")
    parser.add_argument("--input-shape", dest="inputs", type=parse_input_shape, action="append", metavar="N,C,...",
                        help="shape of one positional input of --input-dtype; repeat for several inputs")
    parser.add_argument("--input-dtype", type=parse_dtype, default=torch.float32, metavar="DTYPE",
                        help="dtype of the inputs without their own (default float32; integer inputs are "
                        "ones, e.g. token ids; floating ones random)")
    parser.add_argument("--depth", type=parse_depth, default=3, metavar="N|all",
                        help="module depth shown in the table (default 3; all: every module)")
    parser.add_argument("--by-operator", action="store_true",
                        help="a line per operator under each module shown (the lines add up to the total)")
    parser.add_argument("--classes", action="store_true", help="a column with each module's class")
    parser.add_argument("--strict", action="store_true",
                        help="fail on an operator with no FLOP rule or a failing formula (default: report it)")
    parser.add_argument("--convention", choices=tuple(CONVENTIONS), default="flop")
    parser.add_argument("--attention", choices=("dense", "effective"), default="dense",
                        help="dense: every (query, key) score; effective: only the pairs the mask keeps")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or meta (meta: no memory, no data)")
    parser.add_argument("--backward", action="store_true",
                        help="also count the backward of the sum of the floating outputs that require grad")
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
    unavailable = cli_hints.unavailable_device(device)
    if unavailable:
        raise UserError(unavailable)
    for spec in args.inputs:
        dtype = spec.dtype or args.input_dtype
        _check_fits(f"input {spec.describe(args.input_dtype)}", prod(spec.shape) * dtype.itemsize, device)
    if device.type == "cpu":
        model_bytes = _model_bytes(factory)
        if model_bytes is not None:
            _check_fits(f"the parameters and buffers of {args.model}()", model_bytes, device)
    try:
        with device:
            model = factory()
    except Exception as error:
        raise UserError(_with_hint(f"{args.model}() raised {_one_line(error)}",
                                   cli_hints.factory_hint(error))) from error
    if not isinstance(model, torch.nn.Module):
        raise UserError(f"{args.model}() returned {type(model).__name__}, expected a torch.nn.Module")
    model.train(args.train)
    inputs = ", ".join(spec.describe(args.input_dtype) for spec in args.inputs)
    try:
        positional, keywords = make_inputs(args.inputs, args.input_dtype, device)
    except ValueError as error:  # a keyword given twice
        raise UserError(str(error)) from error
    except (RuntimeError, MemoryError) as error:  # torch.OutOfMemoryError is a RuntimeError
        size = sum(prod(spec.shape) * (spec.dtype or args.input_dtype).itemsize for spec in args.inputs)
        raise UserError(f"cannot allocate the inputs ({inputs}; {_gib(size)}) on {device}: {_one_line(error)}") from error
    grad = contextlib.nullcontext() if args.backward else torch.no_grad()
    metrics = args.metrics + (("bytes",) if args.device_spec else ())
    if args.device_spec and args.convention != "flop":
        raise UserError(f"--device-spec needs FLOPs: use --convention flop, not {args.convention!r}")
    attempt = cli_hints.Attempt(model, args.inputs, args.input_dtype, device)
    with FlopMode(model, convention=args.convention, metrics=metrics, strict=args.strict,
                  attention=args.attention) as mode, grad:
        output = _run(lambda: model(*positional, **keywords), f"running the model on inputs {inputs}", attempt)
        if args.backward:
            _run(lambda: mode.run_backward(output), "--backward: the backward of the model's outputs", attempt)
    return mode


def _run(step: Callable[[], Any], what: str, attempt: cli_hints.Attempt) -> Any:
    """``step()``; what it raises as a UserError, with a hint when one fits."""
    try:
        return step()
    except (UnsupportedOperatorError, FormulaError) as error:
        raise UserError(f"--strict: {error}") from error
    except Exception as error:
        message = f"{what} raised {_one_line(error)}"
        raise UserError(_with_hint(message, cli_hints.hint(error, attempt))) from error


def _with_hint(message: str, hint: Optional[str]) -> str:
    return f"{message} (hint: {hint})" if hint else message


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.inputs:
        parser.error("give the model's inputs: --input-shape 1,3,224,224 or --input NAME=SHAPE[:DTYPE]")
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
        print(mode.table(depth=args.depth, device=args.device_spec, classes=args.classes,
                         operators=args.by_operator))
    return 0


if __name__ == "__main__":
    sys.exit(main())
