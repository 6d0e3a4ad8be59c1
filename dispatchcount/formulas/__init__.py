"""FLOP formulas, one module per op family; importing this package registers them all."""

from dispatchcount.formulas import matmul, conv, attention  # noqa: F401

# Every other aten family (issue 3): pointwise, reductions, norms, pooling, losses, indexing,
# linear algebra, FFT, optimizers, RNN cells, explicit zeros.
from dispatchcount.formulas import (  # noqa: F401
    pointwise,
    reduction,
    norm,
    pooling,
    loss,
    indexing,
    sorting,
    linalg,
    fft,
    optim,
    rnn,
    products,
    sparse,
    quantization,
    zero,
)
