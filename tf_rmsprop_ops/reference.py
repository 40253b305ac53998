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


# --- 8-bit optimizer state (docs/design.md 1.7) ------------------------------------------
#
# A state tensor (ms, mom, mg) is stored as one uint8 code per element plus one float32
# `absmax` per block of BLOCK_SIZE consecutive elements of a row; value = MAP[code] * absmax
# (a float32 product). Rows: a variable of rank >= 2 is [shape[0], prod(shape[1:])] and a
# block never spans two rows (so a sparse step requantizes only the rows it names); rank 0
# and 1 are one row. absmax has shape [rows, ceil(row / BLOCK_SIZE)].
#
# The maps are bitsandbytes' dynamic ("tree") maps (`create_dynamic_map(signed,
# max_exponent_bits=7, total_bits=8)`), built here in float32 the way bitsandbytes' torch
# code computes them (torch.linspace's two-sided fused multiply-add, then the float32 product
# with float32(10 ** e)), so they are its tables bit for bit. `ms` (>= 0) takes the unsigned
# map, `mom` and `mg` the signed one.
#
# Quantizing a block: absmax = max |x| (NaN propagates); x / absmax in float32; the code of
# the nearest map entry, found against the float32 midpoints (MAP[j] + MAP[j+1]) / 2 of
# neighbouring entries (a value equal to a midpoint takes the upper entry; below the first
# entry the first code, above the last the last). A block whose absmax is 0 stores the zero
# code everywhere; a NaN x / absmax stores the zero code (its block's absmax is then NaN or
# inf, and the whole block dequantizes to NaN: a non-finite state poisons its block).

BLOCK_SIZE = 256
MIN_8BIT_SIZE = 4096


def _torch_linspace_f32(start, end, steps):
    """torch.linspace in float32 as its CPU kernel computes it: start + step * i for the
    first half, end - step * (steps - 1 - i) for the rest, each one fused multiply-add
    (exact here in float64: the product of a float32 and a small integer is exact)."""
    f = np.float32
    start, end = f(start), f(end)
    step = f((end - start) / f(steps - 1))
    i = np.arange(steps, dtype=np.float64)
    return np.where(i < steps // 2, np.float64(start) + np.float64(step) * i,
                    np.float64(end) - np.float64(step) * (steps - 1 - i)).astype(f)


def dynamic_map(signed):
    """The 256 float32 entries of the dynamic map, sorted (signed: zero at index 127, range
    -0.99297..1; unsigned: zero at index 0, smallest positive 3.25e-7)."""
    f = np.float32
    data = []
    for i in range(7):
        k = 2 ** i if signed else 2 ** (i + 1)
        bounds = _torch_linspace_f32(0.1, 1.0, k + 1)
        means = (bounds[:-1] + bounds[1:]) / f(2)
        scaled = f(10.0 ** (i - 6)) * means
        data.append(scaled)
        if signed:
            data.append(-scaled)
    data.append(np.array([0.0, 1.0], f))
    table = np.sort(np.concatenate(data).astype(f))
    assert table.size == 256
    return table


def _rows_of(shape):
    """(rows, row) of the block layout: [shape[0], prod(shape[1:])] for rank >= 2."""
    shape = tuple(shape)
    if len(shape) >= 2:
        return shape[0], int(np.prod(shape[1:], dtype=np.int64))
    return 1, int(np.prod(shape, dtype=np.int64))


def absmax_shape(shape, block_size=BLOCK_SIZE):
    rows, row = _rows_of(shape)
    return (rows, -(-row // block_size))


def quantize_blockwise(x, signed, block_size=BLOCK_SIZE):
    """(codes uint8 of x's shape, absmax float32 [rows, blocks per row]) of float32(x)."""
    x = np.asarray(x, np.float32)
    table = dynamic_map(signed)
    mids = (table[:-1] + table[1:]) / np.float32(2)
    rows, row = _rows_of(x.shape)
    nblocks = -(-row // block_size)
    padded = np.zeros((rows, nblocks * block_size), np.float32)
    padded[:, :row] = x.reshape(rows, row)
    blocks = padded.reshape(rows, nblocks, block_size)
    with np.errstate(invalid="ignore", divide="ignore"):
        absmax = np.max(np.abs(blocks), axis=2)  # NaN propagates
        norm = (blocks / absmax[:, :, None]).astype(np.float32)
    zero = np.int64(np.flatnonzero(table == 0)[0])
    codes = np.searchsorted(mids, norm, side="right")  # count of midpoints <= norm
    codes = np.where(np.isnan(norm) | (absmax[:, :, None] == 0), zero, codes)
    codes = codes.reshape(rows, nblocks * block_size)[:, :row].astype(np.uint8)
    return codes.reshape(x.shape), absmax.astype(np.float32)


def dequantize_blockwise(codes, absmax, signed, block_size=BLOCK_SIZE):
    """float32 values MAP[code] * absmax (one float32 product per element)."""
    codes = np.asarray(codes, np.uint8)
    absmax = np.asarray(absmax, np.float32)
    rows, row = _rows_of(codes.shape)
    if absmax.shape != absmax_shape(codes.shape, block_size):
        raise ValueError(f"absmax shape {absmax.shape} does not match codes of shape "
                         f"{codes.shape}: want {absmax_shape(codes.shape, block_size)}")
    scale = np.repeat(absmax, block_size, axis=1)[:, :row]
    with np.errstate(invalid="ignore", over="ignore"):
        out = dynamic_map(signed)[codes.reshape(rows, row)] * scale
    return out.astype(np.float32).reshape(codes.shape)


# Which map each state takes: ms >= 0 the unsigned map (bitsandbytes' RMSprop8bit uses the
# signed one and wastes half its codes: `ms_signed=True` reproduces it), mom and mg signed.
STATE_SIGNED = {"ms": False, "mom": True, "mg": True}


def rmsprop_x_step_8bit(var, grad, ms, mom=None, mg=None, *, ms_signed=False,
                        block_size=BLOCK_SIZE, **hyper):
    """One dense step with 8-bit state: each state is a (codes, absmax) pair. The states
    are dequantized (float32), updated by `rmsprop_x_step` (float64), the variable is updated
    from the unquantized new state, and the new states, rounded to float32, are quantized.

    Returns {"var": float64, "ms"/"mom"/"mg": (codes, absmax) or None, and "ms_exact" etc.:
    the float64 new states before quantization (the codes' tolerance in tests: a backend
    computing in float32 may land on the other side of a midpoint where the exact value is
    within float32 rounding of it)}."""
    signed = dict(STATE_SIGNED, ms=ms_signed)
    states = {"ms": ms, "mom": mom, "mg": mg}
    floats = {k: None if q is None else dequantize_blockwise(*q, signed[k], block_size)
              for k, q in states.items()}
    new = rmsprop_x_step(var, grad, floats["ms"], floats["mom"], floats["mg"], **hyper)
    out = {"var": new["var"]}
    for k in states:
        out[k] = None if new[k] is None else quantize_blockwise(new[k], signed[k], block_size)
        out[k + "_exact"] = new[k]
    return out


def sparse_rmsprop_x_step_8bit(var, grad, indices, ms, mom=None, mg=None, *, ms_signed=False,
                               block_size=BLOCK_SIZE, **hyper):
    """The sparse step with 8-bit state (rank >= 2: a row is its own blocks). Rows not named
    keep their codes and absmax bit for bit; duplicates sum first, as the float step."""
    var = np.array(var, np.float64)
    if var.ndim < 2:
        raise ValueError("8-bit state: the sparse step needs a variable of rank >= 2 (a rank-1 "
                         "variable is one row of blocks: one element's update would requantize "
                         "its neighbours)")
    indices = np.asarray(indices).astype(np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= var.shape[0]):
        raise IndexError(f"index out of range [0, {var.shape[0]})")
    grad = np.asarray(grad, np.float64)
    states = {"ms": ms, "mom": mom, "mg": mg}
    out = {"var": var.copy()}
    for k, q in states.items():
        out[k] = None if q is None else (np.array(q[0]), np.array(q[1]))
        out[k + "_exact"] = None
    for r in np.unique(indices):
        g = grad[indices == r].sum(axis=0)
        rowq = {k: None if q is None else (q[0][r:r + 1], q[1][r:r + 1])
                for k, q in states.items()}
        new = rmsprop_x_step_8bit(var[r:r + 1], g[None], rowq["ms"], rowq["mom"], rowq["mg"],
                                  ms_signed=ms_signed, block_size=block_size, **hyper)
        out["var"][r] = new["var"][0]
        for k in states:
            if new[k] is not None:
                out[k][0][r], out[k][1][r] = new[k][0][0], new[k][1][0]
                if out[k + "_exact"] is None:
                    out[k + "_exact"] = {}
                out[k + "_exact"][int(r)] = new[k + "_exact"][0]
    return out
