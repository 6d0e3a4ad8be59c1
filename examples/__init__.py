"""Runnable examples for dispatchcount (a package so that ``examples.vmamba:vmamba_tiny_v0`` resolves
from the repository root, e.g. for ``python -m dispatchcount``)."""
