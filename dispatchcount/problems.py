"""What could not be counted (ops without a rule, formulas that failed, strict mode), and what
was only estimated (notes)."""

from __future__ import annotations

from typing import Any

__all__ = ["Problems", "Notes", "UnsupportedOperatorError", "FormulaError"]


class UnsupportedOperatorError(RuntimeError):
    """Raised under ``strict=True`` for an op that has no FLOP rule."""


class FormulaError(RuntimeError):
    """Raised under ``strict=True`` when a FLOP formula fails."""


class Problems:
    """The error sink of one counting run: it records, or under ``strict`` raises."""

    __slots__ = ("convention", "strict", "unsupported", "errors")

    def __init__(self, convention: str, strict: bool) -> None:
        self.convention = convention
        self.strict = strict
        self.unsupported: dict[Any, int] = {}  # op -> calls
        self.errors: dict[Any, list[Any]] = {}  # op -> [calls, first error message]

    def clear(self) -> None:
        self.unsupported.clear()
        self.errors.clear()

    def no_rule(self, func: Any) -> None:
        if self.strict:
            raise UnsupportedOperatorError(
                f"dispatchcount: no FLOP rule for {func} (convention {self.convention!r}); "
                "register one with dispatchcount.register_formula"
            )
        self.unsupported[func] = self.unsupported.get(func, 0) + 1

    def formula_failed(self, func: Any, error: Exception, rule: str = "FLOP formula") -> None:
        if self.strict:
            raise FormulaError(f"dispatchcount: the {rule} for {func} raised {error!r}") from error
        entry = self.errors.get(func)
        if entry is None:
            prefix = "" if rule == "FLOP formula" else f"{rule}: "
            self.errors[func] = [1, f"{prefix}{type(error).__name__}: {error}"]
        else:
            entry[0] += 1


class Notes:
    """What a counting run could only estimate, {message: calls} (e.g. an attention mask on the
    meta device, counted dense under ``attention="effective"``)."""

    __slots__ = ("messages",)

    def __init__(self) -> None:
        self.messages: dict[str, int] = {}

    def add(self, message: str) -> None:
        self.messages[message] = self.messages.get(message, 0) + 1

    def clear(self) -> None:
        self.messages.clear()
