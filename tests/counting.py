"""Shared test helper: FLOPs by operator of a function run under FlopMode, none uncounted."""

from dispatchcount import FlopMode


def counted(fn, phase=None):
    with FlopMode() as mode:
        fn()
    assert mode.unsupported_ops() == {}
    return mode.by_operator(phase)


def counted_total(fn):
    return sum(counted(fn).values())
