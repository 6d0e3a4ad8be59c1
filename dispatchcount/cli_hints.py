"""One-line hints for the command line's common mistakes, read from the error a run raised.

Each hint is a function of the error and the :class:`Attempt` (the model and its inputs)
returning a sentence or None; :func:`hint` returns the first sentence found. A new hint is one
more function in :data:`HINTS`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from dispatchcount.cli_inputs import InputSpec

__all__ = ["Attempt", "hint", "factory_hint", "unavailable_device", "HINTS"]


@dataclass(frozen=True)
class Attempt:
    """What was run: the model, its inputs as given, the default input dtype and the device."""

    model: torch.nn.Module
    inputs: Sequence[InputSpec]
    default_dtype: torch.dtype
    device: torch.device

    def dtypes(self) -> list[torch.dtype]:
        return [spec.dtype or self.default_dtype for spec in self.inputs]

    def parameter_dtype(self) -> Optional[torch.dtype]:
        return next((p.dtype for p in self.model.parameters() if p.is_floating_point()), None)


def _integer_ids(error: BaseException, attempt: Attempt) -> Optional[str]:
    text = str(error)
    if "'indices'" in text and any(d.is_floating_point for d in attempt.dtypes()):
        return ("the model looks up embeddings with its inputs: give token ids an integer dtype, "
                "e.g. --input-dtype int64 or --input input_ids=2,16:int64")
    return None


def _forward_arguments(error: BaseException, attempt: Attempt) -> Optional[str]:
    text = str(error)
    if not isinstance(error, TypeError) or not ("positional argument" in text or "keyword argument" in text):
        return None
    try:
        signature = str(inspect.signature(attempt.model.forward))
    except (TypeError, ValueError):
        return None
    return (f"the model's forward takes {signature}: give one --input per argument, "
            "in order or as NAME=SHAPE[:DTYPE]")


_DATA_MESSAGES = ("meta tensor", "no data", "data-dependent", "data dependent")


def _meta_needs_data(error: BaseException, attempt: Attempt) -> Optional[str]:
    if attempt.device.type == "meta" and any(m in str(error) for m in _DATA_MESSAGES):
        return ("the model reads tensor values (.item(), .tolist(), nonzero, a branch on a tensor), "
                "which meta tensors do not have: count on --device cpu")
    return None


_SHAPE_MESSAGES = ("cannot be multiplied", "same reduction dim", "channels", "normalized_shape",
                   "must match the size", "Invalid channel dimensions", "shape '[")


def _input_shape(error: BaseException, attempt: Attempt) -> Optional[str]:
    if not any(m in str(error) for m in _SHAPE_MESSAGES):
        return None
    layer = _first_layer(attempt.model)
    return "check the input shapes" + (f": the model's first layer, {layer}" if layer else "")


def _first_layer(model: torch.nn.Module) -> Optional[str]:
    """What the first shape-defining module (in definition order) takes, or None."""
    for name, module in model.named_modules():
        label = f"{name or 'the model'} ({type(module).__name__})"
        if isinstance(module, torch.nn.Linear):
            return f"{label}, takes a last dimension of {module.in_features}"
        if isinstance(module, torch.nn.modules.conv._ConvNd):
            dims = ", ".join("..." for _ in module.kernel_size)
            return f"{label}, takes (batch, {module.in_channels}, {dims})"
        if isinstance(module, torch.nn.Embedding):
            return f"{label}, takes integer ids below {module.num_embeddings}"
        if isinstance(module, torch.nn.LayerNorm):
            return f"{label}, takes a last dimension of {module.normalized_shape[-1]}"
    return None


_DTYPE_MESSAGES = ("same dtype", "expected scalar type", "should be the same", "Expected scalar type")


def _input_dtype(error: BaseException, attempt: Attempt) -> Optional[str]:
    if not any(m in str(error) for m in _DTYPE_MESSAGES):
        return None
    expected = attempt.parameter_dtype()
    given = ", ".join(sorted({str(d).replace("torch.", "") for d in attempt.dtypes()}))
    if expected is None:
        return f"the inputs are {given}: check their dtypes (--input-dtype, or SHAPE:DTYPE per --input)"
    name = str(expected).replace("torch.", "")
    return (f"the inputs are {given}, the model's parameters {name}: use --input-dtype {name} "
            "(token ids and other integer inputs: SHAPE:int64 per --input)")


HINTS: tuple[Callable[[BaseException, Attempt], Optional[str]], ...] = (
    _integer_ids, _forward_arguments, _meta_needs_data, _input_shape, _input_dtype,
)


def hint(error: BaseException, attempt: Attempt) -> Optional[str]:
    """The first hint that explains ``error`` raised by running ``attempt``, or None."""
    for find in HINTS:
        found = find(error, attempt)
        if found:
            return found
    return None


def factory_hint(error: BaseException) -> Optional[str]:
    """A hint for a factory that raised when called with no arguments."""
    if isinstance(error, TypeError) and "required" in str(error) and "argument" in str(error):
        return "the factory is called with no arguments: name a function that builds the model with its defaults"
    return None


def unavailable_device(device: torch.device) -> Optional[str]:
    """Why ``device`` cannot be used here (its backend missing), or None."""
    backend = getattr(torch, device.type, None)
    is_available = getattr(backend, "is_available", None)
    if device.type in ("cpu", "meta") or not callable(is_available) or is_available():
        return None
    if device.type == "cuda" and torch.version.cuda is None and torch.version.hip is None:
        why = f"this PyTorch ({torch.__version__}) is built without CUDA"
    else:
        why = f"no {device.type} device is available"
    return (f"--device {device}: {why}; count on --device meta (no memory, the same counts) "
            "or --device cpu")
