"""The command line's model inputs: ``--input [NAME=]SHAPE[:DTYPE]`` and ``--input-shape SHAPE``.

Each input is a random tensor of its shape: floating and complex ones normal, integer and
boolean ones all ones (a valid token id for any vocabulary of two or more, an attention mask
that keeps every position). Unnamed inputs are passed by position in the order given, named
ones as keyword arguments (``input_ids=``, ``attention_mask=`` for transformers models).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

__all__ = ["InputSpec", "parse_input", "parse_input_shape", "parse_shape", "parse_dtype", "make_inputs"]

# Spellings shown in messages; any torch dtype attribute name ("long", "half", "uint8") works.
COMMON_DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "bool")


@dataclass(frozen=True)
class InputSpec:
    """One model input: its shape, dtype (None: ``--input-dtype``) and keyword (None: positional)."""

    shape: tuple[int, ...]
    dtype: Optional[torch.dtype] = None
    name: Optional[str] = None

    def describe(self, default_dtype: torch.dtype) -> str:
        """``input_ids=(2, 16) int64``."""
        dtype = str(self.dtype or default_dtype).replace("torch.", "")
        return (f"{self.name}=" if self.name else "") + f"{self.shape} {dtype}"


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` -> (1, 3, 224, 224); ``"()"`` -> () (a 0-dimensional tensor)."""
    if text.strip() == "()":
        return ()
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(size < 0 for size in shape):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated non-negative integers such as 1,3,224,224, got {text!r}"
        )
    return shape


def parse_dtype(text: str) -> torch.dtype:
    """A torch dtype by its attribute name: ``"int64"``, ``"long"``, ``"bfloat16"``."""
    dtype = getattr(torch, text.strip(), None)
    if not isinstance(dtype, torch.dtype):
        raise argparse.ArgumentTypeError(
            f"expected a torch dtype such as {', '.join(COMMON_DTYPES)}, got {text!r}"
        )
    return dtype


def parse_input_shape(text: str) -> InputSpec:
    """``--input-shape 1,3,224,224``: a positional input of ``--input-dtype``."""
    return InputSpec(parse_shape(text))


def parse_input(text: str) -> InputSpec:
    """``--input [NAME=]SHAPE[:DTYPE]``: ``input_ids=2,16:int64``, ``1,3,224,224``, ``x=4,8:bfloat16``."""
    name: Optional[str] = None
    rest = text
    if "=" in rest:
        name, _, rest = rest.partition("=")
        name = name.strip()
        if not name.isidentifier():
            raise argparse.ArgumentTypeError(
                f"expected [NAME=]SHAPE[:DTYPE] with NAME a keyword argument of the model's forward, got {text!r}"
            )
    shape_text, sep, dtype_text = rest.partition(":")
    try:
        return InputSpec(parse_shape(shape_text), parse_dtype(dtype_text) if sep else None, name)
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"{error} (in {text!r}; the form is [NAME=]SHAPE[:DTYPE], "
                                         "e.g. input_ids=2,16:int64)") from None


def make_inputs(specs: Sequence[InputSpec], default_dtype: torch.dtype,
                device: torch.device) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """The positional and keyword tensors of ``specs``; a ValueError names a keyword given twice."""
    args: list[torch.Tensor] = []
    kwargs: dict[str, torch.Tensor] = {}
    for spec in specs:
        tensor = _tensor(spec.shape, spec.dtype or default_dtype, device)
        if spec.name is None:
            args.append(tensor)
        elif spec.name in kwargs:
            raise ValueError(f"--input: {spec.name!r} given twice")
        else:
            kwargs[spec.name] = tensor
    return args, kwargs


def _tensor(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Any:
    if not (dtype.is_floating_point or dtype.is_complex):
        return torch.ones(shape, dtype=dtype, device=device)
    try:
        return torch.randn(shape, dtype=dtype, device=device)
    except RuntimeError:  # float8 and other dtypes without a random generator
        return torch.randn(shape, device=device).to(dtype)
