"""Counts summed over the ranks of a torch.distributed process group.

Each rank counts what it computes (docs/conventions.md, "Distributed and tensor subclasses"):
its own batch under DDP and FSDP, its local shards under DTensor and tensor parallelism, and
every replicated op it runs. :func:`reduce` gathers every rank's snapshot and sums them, so
that every rank holds the same global totals and table::

    with FlopMode(model) as fm:
        model(x).sum().backward()
    counts = dispatchcount.distributed.reduce(fm)        # a collective: every rank calls it
    counts.total(), counts.by_module(), dispatchcount.report.table(counts, 3)

:func:`merge` is the summation itself, for snapshots gathered any other way.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

from dispatchcount.records import Counts, Row

__all__ = ["reduce", "merge"]


def reduce(counter: Any, group: Optional[Any] = None) -> Counts:
    """Every rank's counts summed over ``group`` (default: the whole world), on every rank.

    ``counter`` is a ``FlopMode`` (or anything with ``counts()``) or a :class:`Counts`. A
    collective: every rank of ``group`` must call it, with the same convention. Rows are
    summed where module, operator, phase, dtype and section agree; what only some ranks saw
    is kept as it is (see :func:`merge`).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("dispatchcount.distributed.reduce needs an initialized torch.distributed process group")
    counts = counter if isinstance(counter, Counts) else _counts_of(counter)
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, counts, group=group)
    return merge(gathered)


def _counts_of(counter: Any) -> Counts:
    counts = getattr(counter, "counts", None)
    if counts is None:
        raise TypeError(f"counter must be a FlopMode or a Counts, got {type(counter).__name__}")
    return counts()


def merge(snapshots: Sequence[Counts]) -> Counts:
    """One snapshot that sums ``snapshots`` (one per rank, in rank order).

    - rows (FLOPs, calls, communication bytes and every other metric slot) are summed where
      module path, operator, phase, dtype and section agree; the others are kept;
    - module names: the union, in the first rank's order, then each later rank's new names;
      a module is uncalled only if no rank called it; forward calls are summed;
    - parameters: the largest count any rank reports per module (every DDP replica, and every
      FSDP or tensor-parallel rank, reports the model's global parameters: a DTensor's
      ``numel()`` is global), so that they are not multiplied by the number of ranks;
    - unsupported ops: calls summed; formula errors: the first rank's message;
    - metrics: those every rank recorded. The conventions must agree.
    """
    if not snapshots:
        raise ValueError("merge needs at least one snapshot")
    first = snapshots[0]
    conventions = {s.convention for s in snapshots}
    if len(conventions) > 1:
        raise ValueError(f"cannot sum counts of different conventions: {sorted(conventions)}")

    rows: dict[tuple, list[float]] = {}
    for snapshot in snapshots:
        for row in snapshot.rows:
            key = (row.names, row.module, row.operator, row.phase, row.dtype, row.section)
            values = rows.get(key)
            if values is None:
                rows[key] = list(row.values)
            else:
                for i, value in enumerate(row.values):
                    values[i] += value

    modules: dict[str, None] = {}
    params: dict[str, int] = {}
    calls: dict[str, int] = {}
    classes: dict[str, str] = {}
    unsupported: dict[str, int] = {}
    errors: dict[str, str] = {}
    uncalled: set[str] = set()
    for snapshot in snapshots:
        modules.update(dict.fromkeys(snapshot.modules))
        for name, count in snapshot.params.items():
            params[name] = max(params.get(name, 0), count)
        _add(calls, snapshot.calls)
        for name, cls in snapshot.classes.items():
            classes.setdefault(name, cls)
        _add(unsupported, snapshot.unsupported)
        for op, message in snapshot.errors.items():
            errors.setdefault(op, message)
        uncalled |= snapshot.uncalled
    metrics = tuple(m for m in first.metrics if all(m in s.metrics for s in snapshots))
    return Counts(
        convention=first.convention,
        unit=first.unit,
        rows=tuple(Row(*key, values=tuple(values)) for key, values in rows.items()),
        modules=tuple(modules),
        params=params,
        calls=calls,
        classes=classes,
        has_model=any(s.has_model for s in snapshots),
        model_ran=any(s.model_ran for s in snapshots),
        unsupported=unsupported,
        errors=errors,
        uncalled=frozenset(name for name in uncalled if not calls.get(name)),
        metrics=metrics,
        beyond_ops=frozenset().union(*(s.beyond_ops for s in snapshots)),
        beyond_label=first.beyond_label,
        partial=any(s.partial for s in snapshots),
        extras={**first.extras, "ranks": len(snapshots)},
    )


def _add(total: dict, values: Union[dict, Any]) -> None:
    for key, value in values.items():
        total[key] = total.get(key, 0) + value
