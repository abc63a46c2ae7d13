"""Single-pass kernels for the optimizers torch has no fused kernel for (filled in later).

Each function returns True when it performed the update, False when no kernel applies
(the caller then runs the foreach rule).
"""


def rmsprop(**kwargs) -> bool:
    return False


def adadelta(**kwargs) -> bool:
    return False


def adamax(**kwargs) -> bool:
    return False


def nadam(**kwargs) -> bool:
    return False
