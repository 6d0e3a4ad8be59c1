"""fvcore's cost of ``torch.einsum``, computed from shapes alone.

fvcore's einsum handle renames the letters in order of first appearance, counts the two batched
matmul equations ``abc,abd->acd`` and ``abc,adc->adb`` exactly, and costs any other equation by
``numpy.einsum_path(..., optimize="optimal")`` on zero-filled arrays of the operands' shapes.
Allocating those arrays is what fvcore does; here the same optimal-path search runs on the
shapes, so that counting never allocates an operand-sized array (meta-device models included)
and numpy is not needed.
"""

from __future__ import annotations

import itertools
import math
from typing import Iterable, Sequence

__all__ = ["fvcore_einsum_macs"]



def fvcore_einsum_macs(equation: str, shapes: Sequence[Sequence[int]]) -> int:
    """fvcore's count for ``torch.einsum(equation, *operands)`` with operands of ``shapes``.

    fvcore renames the letters in order of first appearance; ``abc,abd->acd`` and
    ``abc,adc->adb`` (batched matmuls) are counted exactly; any other equation is costed by
    ``numpy.einsum_path(..., optimize="optimal")``, whose "Optimized FLOP count" (the sum of the
    pairwise contraction costs plus one, printed with 4 significant digits) fvcore halves and
    floors. This reproduces that number without numpy, including the rounding.
    """
    equation = equation.replace(" ", "")
    letters = dict.fromkeys(ch for ch in equation if ch.isalpha())
    rename = {ord(ch): 97 + i for i, ch in enumerate(letters)}
    equation = equation.translate(rename)
    if equation == "abc,abd->acd":
        n, c, t = shapes[0]
        return n * c * t * shapes[-1][-1]
    if equation == "abc,adc->adb":
        n, t, g = shapes[0]
        return n * t * g * shapes[-1][1]
    terms, output = _parse_einsum(equation, shapes)
    sizes: dict[str, int] = {}
    for term, shape in zip(terms, shapes):
        if len(term) != len(shape):
            raise ValueError(
                f"einsum equation {equation!r}: operand of shape {tuple(shape)} needs "
                f"{len(shape)} subscripts, got {term!r}"
            )
        for ch, dim in zip(term, shape):
            if sizes.get(ch, 1) == 1:  # a size-1 dimension broadcasts against the larger one
                sizes[ch] = dim
    cost = _einsum_path_cost([set(t) for t in terms], set(output), terms, output, sizes)
    # numpy prints ``cost + 1`` as "%.3e"; fvcore parses that string back and halves it.
    return int(math.floor(float(f"{cost + 1:.3e}") / 2))


_EINSUM_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _parse_einsum(equation: str, shapes: Sequence[Sequence[int]]) -> tuple[list[str], str]:
    """Operand subscripts with any ``...`` spelled out in fresh letters, and the output."""
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        raise ValueError(
            f"einsum equation {equation!r} names {len(terms)} operands, got {len(shapes)}"
        )
    fresh = sorted(set(_EINSUM_LETTERS) - set(equation))
    longest = 0
    if "..." in equation:
        for i, (term, shape) in enumerate(zip(terms, shapes)):
            if "..." in term:
                count = max(len(shape) - (len(term) - 3), 0)
                longest = max(longest, count)
                terms[i] = term.replace("...", "".join(fresh[len(fresh) - count :]) if count else "")
    ellipsis = "".join(fresh[len(fresh) - longest :]) if longest else ""
    if arrow:
        output = rhs.replace("...", ellipsis)
    else:
        joined = "".join(terms)
        singles = sorted(ch for ch in set(joined) if joined.count(ch) == 1 and ch not in ellipsis)
        output = ellipsis + "".join(singles)
    return terms, output


def _size(indices: Iterable[str], sizes: dict[str, int]) -> int:
    total = 1
    for ch in indices:
        total *= sizes[ch]
    return total


def _contract(positions: tuple, operands: list, output: set) -> tuple[list, set, set]:
    """Contract the operands at ``positions``: (operands left, with the result appended last;
    indices the contraction touches; indices it sums away)."""
    touched: set = set()
    kept = set(output)
    left = []
    for i, term in enumerate(operands):
        if i in positions:
            touched |= term
        else:
            left.append(term)
            kept |= term
    result = touched & kept
    left.append(result)
    return left, touched, touched - result


def _contraction_cost(touched: set, summed: set, n_terms: int, sizes: dict[str, int]) -> int:
    # numpy's estimate: every touched index combination, times (terms - 1), plus one for a sum
    return _size(touched, sizes) * (max(1, n_terms - 1) + (1 if summed else 0))


def _einsum_path_cost(
    operands: list, output: set, terms: list, output_term: str, sizes: dict[str, int]
) -> int:
    """The cost numpy's ``einsum_path(optimize="optimal")`` reports, minus its ``+ 1``."""
    n = len(operands)
    indices = set().union(*operands)
    if n <= 2 or indices == output:
        path = [tuple(range(n))]
    else:
        memory_limit = max(_size(t, sizes) for t in [*terms, output_term])
        path = _optimal_path(operands, output, sizes, memory_limit)
    cost = 0
    for positions in path:
        operands, touched, summed = _contract(positions, operands, output)
        cost += _contraction_cost(touched, summed, len(positions), sizes)
    return cost


def _optimal_path(operands: list, output: set, sizes: dict[str, int], memory_limit: int) -> list:
    """Exhaustive search over pairwise contractions, as numpy's "optimal" does: a contraction
    whose result exceeds ``memory_limit`` elements is not taken; the cheapest path wins (the
    first found among equals); if no pair fits, the rest is contracted at once."""
    candidates = [(0, [], operands)]
    n = len(operands)
    for step in range(n - 1):
        extended = []
        for cost, path, left in candidates:
            for pair in itertools.combinations(range(n - step), 2):
                after, touched, summed = _contract(pair, left, output)
                if _size(after[-1], sizes) > memory_limit:
                    continue
                extended.append(
                    (cost + _contraction_cost(touched, summed, 2, sizes), path + [pair], after)
                )
        if not extended:
            best = min(candidates, key=lambda c: c[0])[1]
            return best + [tuple(range(n - step))]
        candidates = extended
    return min(candidates, key=lambda c: c[0])[1]
