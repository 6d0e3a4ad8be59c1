"""Custom ops with Triton kernels, installed as dispatchcount.kernels."""
