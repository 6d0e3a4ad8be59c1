"""FLOP formulas of convention "flop", one module per op family; importing this package
registers them all (and the explicit zeros, which every FLOP convention shares).

Resolvers are asked in registration order, so the order of the imports below is the order in
which the families are asked about an op none of them names explicitly.
"""

from dispatchcount.formulas import attention, conv, matmul, prim  # noqa: F401
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
