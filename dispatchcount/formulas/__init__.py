"""FLOP formulas of convention "flop", one module per op family; importing this package
registers them all (and the explicit zeros, which every FLOP convention shares).

Resolvers are asked in registration order, so the order of the imports below is the order in
which the families are asked about an op none of them names explicitly.
"""

from dispatchcount.formulas import (  # noqa: F401  # noqa: F401
    attention,
    communication,
    conv,
    fft,
    indexing,
    linalg,
    loss,
    matmul,
    norm,
    optim,
    pointwise,
    pooling,
    prim,
    products,
    quantization,
    quantized,
    reduction,
    rnn,
    sorting,
    sparse,
    torch_nn,
    zero,
)
