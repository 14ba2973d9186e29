"""NumPy float64 references: the spec every fast implementation is tested against.

One module per op family (conv, linear, pool, batchnorm, activation, dropout, loss,
optim). Written for clarity, not speed; they compute in float64 whatever they are given.
"""
