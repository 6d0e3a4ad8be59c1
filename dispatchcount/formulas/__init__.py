"""FLOP formulas, one module per op family; importing this package registers them all."""

from dispatchcount.formulas import attention, conv, matmul, prim  # noqa: F401
from dispatchcount.formulas import fvcore_rules  # noqa: F401

# Every other aten family (issue 3): pointwise, reductions, norms, pooling, losses, indexing,
# sorting, linear algebra, FFT, optimizers, RNN layers, other products, sparse, quantization,
# and the reviewed explicit zeros.
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
    torch_nn,
    zero,
)
