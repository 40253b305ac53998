"""The RMSpropX update in float64 NumPy: the definition every backend is tested against.

This is docs/design.md section 1.1 written as plainly as possible (branches, no folded
coefficients), so that it is an independent statement of the math rather than a copy of
the kernels' formulation::

    coupled wd:   g   = g + wd * var                      (PyTorch-style L2)
    ms  = rho * ms + (1 - rho) * g**2
    centered:     mg  = rho * mg + (1 - rho) * g;  v = max(ms - mg**2, 0)   else v = ms
    denom = sqrt(v + eps)   (eps inside the sqrt: Keras, TF, Optax default)
          | sqrt(v) + eps   (eps outside: PyTorch, Optax eps_in_sqrt=False)
    step  = g / denom
    momentum, lr inside (Keras/TF/Optax):  mom = momentum * mom + lr * step
                                           upd = momentum * mom + lr * step if nesterov else mom
    momentum, lr outside (PyTorch):        mom = momentum * mom + step
                                           upd = lr * (momentum * mom + step if nesterov else mom)
    no momentum:  upd = lr * step
    decoupled wd: var = var - lr * wd * var                (Keras 3 / AdamW style, before the step)
    var = var - upd

Optax's `bias_correction=True` (step t = 1, 2, ...): the denominator uses ms / (1 - rho**t)
(and mg / (1 - rho**t)) in place of ms (and mg); the stored slots are not corrected.
"""

import numpy as np

EPSILON_PLACEMENTS = ("inside_sqrt", "outside_sqrt")
LR_PLACEMENTS = ("inside_momentum", "outside_momentum")
WEIGHT_DECAY_MODES = ("none", "decoupled", "coupled")


def _f64(x):
    return None if x is None else np.array(x, dtype=np.float64)


def rmsprop_x_step(var, grad, ms, mom=None, mg=None, *, lr, rho=0.9, momentum=0.0,
                   epsilon=1e-7, weight_decay=0.0, nesterov=False,
                   epsilon_placement="inside_sqrt", lr_placement="inside_momentum",
                   weight_decay_mode="none", bias_correction_step=None):
    """One dense step. Momentum is on iff `mom` is given, centered iff `mg` is given.

    Returns a dict with the new `var`, `ms`, `mom`, `mg` (float64; None for absent slots).
    Inputs are not modified.
    """
    if epsilon_placement not in EPSILON_PLACEMENTS:
        raise ValueError(f"epsilon_placement must be one of {EPSILON_PLACEMENTS}")
    if lr_placement not in LR_PLACEMENTS:
        raise ValueError(f"lr_placement must be one of {LR_PLACEMENTS}")
    if weight_decay_mode not in WEIGHT_DECAY_MODES:
        raise ValueError(f"weight_decay_mode must be one of {WEIGHT_DECAY_MODES}")
    if nesterov and mom is None:
        raise ValueError("nesterov requires momentum (a mom slot)")
    var, g, ms, mom, mg = map(_f64, (var, grad, ms, mom, mg))

    if weight_decay_mode == "coupled":
        g = g + weight_decay * var
    ms = rho * ms + (1.0 - rho) * g * g
    correction = 1.0 if bias_correction_step is None else 1.0 - rho ** bias_correction_step
    if mg is not None:
        mg = rho * mg + (1.0 - rho) * g
        v = np.maximum(ms / correction - (mg / correction) ** 2, 0.0)
    else:
        v = ms / correction
    if epsilon_placement == "inside_sqrt":
        denom = np.sqrt(v + epsilon)
    else:
        denom = np.sqrt(v) + epsilon
    step = g / denom
    if mom is not None:
        if lr_placement == "inside_momentum":
            mom = momentum * mom + lr * step
            upd = momentum * mom + lr * step if nesterov else mom
        else:
            mom = momentum * mom + step
            upd = lr * (momentum * mom + step if nesterov else mom)
    else:
        upd = lr * step
    if weight_decay_mode == "decoupled":
        var = var - lr * weight_decay * var
    var = var - upd
    return {"var": var, "ms": ms, "mom": mom, "mg": mg}


def sparse_rmsprop_x_step(var, grad, indices, ms, mom=None, mg=None, **hyper):
    """One sparse step: `grad` has shape [N] + var.shape[1:], `indices` shape [N].

    Duplicated indices sum their gradient rows and get one update; rows not named are
    untouched (slots included). Raises IndexError for an index outside [0, rows).
    """
    var, grad, ms, mom, mg = map(_f64, (var, grad, ms, mom, mg))
    indices = np.asarray(indices).astype(np.int64)
    out = {"var": var.copy(), "ms": ms.copy(),
           "mom": None if mom is None else mom.copy(), "mg": None if mg is None else mg.copy()}
    if indices.size and (indices.min() < 0 or indices.max() >= var.shape[0]):
        raise IndexError(f"index out of range [0, {var.shape[0]})")
    for row in np.unique(indices):
        g = grad[indices == row].sum(axis=0)
        new = rmsprop_x_step(var[row], g, ms[row], None if mom is None else mom[row],
                             None if mg is None else mg[row], **hyper)
        for name, value in new.items():
            if value is not None:
                out[name][row] = value
    return out
