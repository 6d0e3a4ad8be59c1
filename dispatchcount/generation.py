"""``count_generate``: what text generation costs, the prompt's prefill apart from each decode step.

``model.generate`` calls the model's forward once per step: first on the whole prompt (the
prefill, which also yields the first new token), then once per further token on that token
alone, with the KV cache of everything before (a decode step). A forward pre-hook on the model
opens a FlopMode section for each call: ``"prefill"``, then ``"token 2"``, ``"token 3"`` ... (the
token each step produces); the sampling work between two calls (argmax, logits processors)
goes to the step that produced the logits.

On the meta device ``generate`` cannot run (its stopping criteria read token values), so the
same steps are run directly: the prompt, then one token at a time with the model's cache,
greedy. Only a decoder-only model with a cache (a transformers ``...ForCausalLM``) fits.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Optional

import torch

from dispatchcount import report
from dispatchcount.mode import FlopMode
from dispatchcount.records import Counts

__all__ = ["GenerationCount", "count_generate"]

PREFILL = "prefill"
_ELIDE_AFTER = 16  # decode steps listed one by one in table(); longer runs are summarized


@dataclass(frozen=True)
class GenerationCount:
    """FLOPs of one generation: ``prefill``, ``per_token`` (one entry per decode step, in order),
    ``total`` (everything counted, including ``generate``'s own work before the first forward,
    ``other``); ``counts`` is the full snapshot, sections ``"prefill"``, ``"token 2"`` ...;
    ``sequences`` what ``generate`` returned (on meta: the prompt and meta placeholders)."""

    prefill: int
    per_token: list[int]
    total: int
    other: int
    prompt_tokens: int
    counts: Counts
    sequences: Any = None

    @property
    def unit(self) -> str:
        return self.counts.unit

    def table(self) -> str:
        """Prefill and each decode step: the tokens it read, the keys it attended to, FLOPs, share."""
        steps: list = list(enumerate(self.per_token))
        if len(steps) > _ELIDE_AFTER:
            steps = steps[:_ELIDE_AFTER // 2] + [None] + steps[-_ELIDE_AFTER // 2:]
        entries: list[tuple[str, str, str, Optional[int]]] = [
            ("prefill", str(self.prompt_tokens), str(self.prompt_tokens), self.prefill)
        ]
        for step in steps:
            if step is None:
                entries.append(("...", "", "", None))
            else:
                i, flops = step
                entries.append((f"token {i + 2}", "1", str(self.prompt_tokens + i + 1), flops))
        if self.per_token:
            entries.append((f"decode, {len(self.per_token)} steps", str(len(self.per_token)), "", sum(self.per_token)))
        if self.other:
            entries.append(("other (before the first forward)", "", "", self.other))
        entries.append(("total", "", "", self.total))
        rows = [
            [step, tokens, keys, "" if value is None else report.human(value),
             f"{100 * value / self.total:.1f}%" if value is not None and self.total else ""]
            for step, tokens, keys, value in entries
        ]
        header = ["step", "input tokens", "keys", self.counts.unit, "%"]
        return f"convention: {self.counts.convention}\n" + report.tabulate(rows, header)


def count_generate(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    *,
    convention: str = "flop",
    attention: str = "dense",
    strict: bool = False,
    **generate_kwargs: Any,
) -> GenerationCount:
    """Run ``model.generate(input_ids, **generate_kwargs)`` once under a FlopMode and split what it
    costs into the prefill and each decode step.

    On the meta device the steps are run without ``generate`` (greedy; ``max_new_tokens`` is
    required and every other keyword goes to the model's forward).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a (batch, prompt length) tensor of token ids, got {shape}")
    fm = FlopMode(model, convention=convention, strict=strict, attention=attention)
    steps = _Steps(fm)
    handle = model.register_forward_pre_hook(steps.next_call)
    try:
        with fm:
            try:
                if input_ids.device.type == "meta":
                    sequences = _generate_on_meta(model, input_ids, **generate_kwargs)
                else:
                    sequences = model.generate(input_ids, **generate_kwargs)
            finally:
                steps.close()
    finally:
        handle.remove()
    by_section = fm.counts().by_section()
    per_token = [int(by_section.get(label, 0)) for label in steps.labels[1:]]
    prefill = int(by_section.get(PREFILL, 0))
    total = int(fm.total())
    return GenerationCount(prefill, per_token, total, total - prefill - sum(per_token),
                           input_ids.shape[1], fm.counts(), sequences)


class _Steps:
    """Opens one section per forward call of the model: "prefill", "token 2", "token 3" ..."""

    def __init__(self, fm: FlopMode) -> None:
        self.fm = fm
        self.labels: list[str] = []
        self.open: Optional[Any] = None

    def next_call(self, module: torch.nn.Module, args: Any) -> None:
        self.close()
        label = PREFILL if not self.labels else f"token {len(self.labels) + 1}"
        self.labels.append(label)
        self.open = self.fm.section(label)
        self.open.__enter__()

    def close(self) -> None:
        if self.open is not None:
            self.open.__exit__(None, None, None)
            self.open = None


def _generate_on_meta(model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: Optional[int] = None,
                      **forward_kwargs: Any) -> torch.Tensor:
    """Greedy decoding without ``generate``: the prompt, then one token per step with the cache."""
    if max_new_tokens is None or int(max_new_tokens) < 1:
        raise ValueError("count_generate on the meta device needs max_new_tokens >= 1")
    for unsupported in ("do_sample", "num_beams", "generation_config"):
        if forward_kwargs.pop(unsupported, None) not in (None, False, 1):
            raise ValueError(f"count_generate on the meta device runs greedy decoding only, got {unsupported}")
    for ignored in ("min_new_tokens", "pad_token_id", "eos_token_id", "bos_token_id"):
        forward_kwargs.pop(ignored, None)  # they change which tokens come out, not what runs
    parameters = inspect.signature(model.forward).parameters
    cache_name = "cache" if "cache" in parameters else "past_key_values"
    if "logits_to_keep" in parameters:
        forward_kwargs.setdefault("logits_to_keep", 1)  # what generate asks for
    mask = forward_kwargs.pop("attention_mask", None)
    batch, length = input_ids.shape

    def positions(start: int, count: int) -> dict:
        # generate passes (batch, tokens) positions to models that take them
        if "position_ids" not in parameters:
            return {}
        ids = torch.arange(start, start + count, device=input_ids.device)
        return {"position_ids": ids.unsqueeze(0).expand(batch, count)}

    tokens = [input_ids]
    out = model(input_ids, use_cache=True, attention_mask=mask, **positions(0, length), **forward_kwargs)
    for step in range(int(max_new_tokens) - 1):
        next_ids = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(next_ids)
        if mask is not None:  # the new token is attended to, as generate extends the mask
            mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=-1)
        cache = out.get("cache")
        if cache is None:  # transformers < 5
            cache = out.get("past_key_values")
        out = model(next_ids, use_cache=True, attention_mask=mask, **{cache_name: cache},
                    **positions(length + step, 1), **forward_kwargs)
    tokens.append(out.logits[:, -1].argmax(-1, keepdim=True))
    return torch.cat(tokens, dim=1)
