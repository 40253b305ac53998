"""8-bit optimizer state in the NumPy reference (tf_rmsprop_ops.reference, docs/design.md
1.7) against bitsandbytes 0.50.2 on the CPU, the peer: its dynamic maps bit for bit, its
blockwise quantizer and dequantizer, and its RMSprop8bit step; and against brute force
(the nearest map entry) and the float32-state step."""
import numpy as np
import pytest

from tf_rmsprop_ops import reference as ref

# The README's test command installs both peers: missing is an error, not a skip.
import torch  # noqa: E402
import bitsandbytes.functional as bnb_f  # noqa: E402
import bitsandbytes.optim as bnb_optim  # noqa: E402

# bitsandbytes' CPU quantizer looks codes up in a table of 65,536 bins over the map's range
# instead of searching: its code may be farther from the value than the nearest entry, by at
# most one bin (measured: 2.86e-5..3.02e-5 over 4 x 100k draws, never more).
LUT_BIN = 2.0 / 65536


def _wide(rng, n, signed):
    """Values spread over 12 decades below the block maximum (where the map's spacing is
    finer than a LUT bin), half of them in the top decades."""
    x = rng.normal(size=n) * np.exp(rng.uniform(-12, 0, size=n) * (rng.uniform(size=n) < 0.5))
    return (x if signed else np.abs(x)).astype(np.float32)


@pytest.mark.parametrize("signed", [True, False])
def test_the_dynamic_map_is_bitsandbytes_table(signed):
    theirs = bnb_f.create_dynamic_map(signed=signed).numpy()
    ours = ref.dynamic_map(signed)
    assert ours.dtype == np.float32 and ours.shape == (256,)
    np.testing.assert_array_equal(ours.view(np.uint32), theirs.view(np.uint32))
    assert np.all(np.diff(ours) > 0) and ours[-1] == 1.0
    assert np.flatnonzero(ours == 0).tolist() == ([127] if signed else [0])


def _norm_scale(x, absmax, block=ref.BLOCK_SIZE):
    """Each element's block absmax, in x's shape."""
    rows, row = ref._rows_of(x.shape)
    return np.repeat(absmax, block, axis=1)[:, :row].reshape(x.shape)


def _norm(x, absmax):
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x / _norm_scale(x, absmax)).astype(np.float32)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("shape", [(5000,), (37, 300), (3, 4, 128), ()])
def test_quantize_takes_the_nearest_entry_in_row_aligned_blocks(rng, signed, shape):
    x = _wide(rng, int(np.prod(shape)), signed).reshape(shape)
    codes, absmax = ref.quantize_blockwise(x, signed)
    rows, row = ref._rows_of(shape)
    assert codes.shape == shape and codes.dtype == np.uint8
    assert absmax.shape == (rows, -(-row // 256)) and absmax.dtype == np.float32
    # absmax: each row's blocks of 256, independently (no block spans two rows)
    flat = np.abs(x.reshape(rows, row))
    for b in range(absmax.shape[1]):
        np.testing.assert_array_equal(absmax[:, b], flat[:, b * 256:(b + 1) * 256].max(axis=1))
    # the nearest entry by brute force over all 256 (float64 distances); where two entries
    # are equally near within the float32 rounding of their midpoint, either is nearest
    table = ref.dynamic_map(signed).astype(np.float64)
    norm = _norm(x, absmax).astype(np.float64).ravel()
    dist = np.abs(table[None, :] - norm[:, None])
    ours = dist[np.arange(norm.size), codes.ravel()]  # noqa: the code's own distance
    assert np.all(ours <= dist.min(axis=1) + 2 ** -24 * np.abs(norm)), "not the nearest entry"
    # dequantizing gives back each value within half the gap between the two map entries
    # around it, times its block's absmax (plus float32 rounding of the product)
    back = ref.dequantize_blockwise(codes, absmax, signed)
    assert back.dtype == np.float32 and back.shape == shape
    j = np.clip(np.searchsorted(table, norm) - 1, 0, 254)
    half_gap = (table[j + 1] - table[j]) / 2 * np.abs(_norm_scale(x, absmax).ravel())
    err = np.abs(back.ravel().astype(np.float64) - x.ravel())
    bad = ~(err <= half_gap * (1 + 1e-6) + 2 ** -23 * np.abs(x.ravel()))
    assert not bad.any(), (x.ravel()[bad][:3], back.ravel()[bad][:3], norm[bad][:3])


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("dist", ["normal", "wide"])
def test_quantize_and_dequantize_agree_with_bitsandbytes(rng, signed, dist):
    n = 256 * 64 + 17  # a partial last block
    x = rng.normal(size=n).astype(np.float32) if dist == "normal" else _wide(rng, n, signed)
    if not signed:
        x = np.abs(x)
    codes, absmax = ref.quantize_blockwise(x, signed)
    table = bnb_f.create_dynamic_map(signed=signed)
    bcodes, bstate = bnb_f.quantize_blockwise(torch.tensor(x), code=table, blocksize=256)
    bcodes = bcodes.numpy()
    np.testing.assert_array_equal(absmax.ravel(), bstate.absmax.numpy())
    # where the codes differ, bitsandbytes' lookup table picked a farther entry, by at most
    # one of its bins; ours is never the farther one
    norm = _norm(x, absmax).astype(np.float64)
    t = ref.dynamic_map(signed).astype(np.float64)
    excess = np.abs(t[bcodes] - norm) - np.abs(t[codes] - norm)
    assert np.all(excess >= 0) and np.all(excess <= LUT_BIN * 1.0001), excess.max()
    if dist == "normal":  # on O(1) values its bins are finer than the map: few differ
        assert np.mean(bcodes != codes) < 0.01
    # dequantization is the same float32 product: bit for bit on the same codes
    theirs = bnb_f.dequantize_blockwise(torch.tensor(codes), absmax=torch.tensor(absmax.ravel()),
                                        code=table, blocksize=256).numpy()
    np.testing.assert_array_equal(ref.dequantize_blockwise(codes, absmax, signed).view(np.uint32),
                                  theirs.view(np.uint32))


def test_zero_blocks_store_the_zero_code_and_a_nan_poisons_only_its_block(rng):
    x = rng.normal(size=(2, 600)).astype(np.float32)
    x[0, 256:512] = 0.0   # an all-zero block
    x[1, 300] = np.nan    # a NaN in row 1's second block
    codes, absmax = ref.quantize_blockwise(x, signed=True)
    assert absmax[0, 1] == 0 and np.all(codes[0, 256:512] == 127)
    back = ref.dequantize_blockwise(codes, absmax, signed=True)
    assert np.all(back[0, 256:512] == 0)
    assert np.isnan(absmax[1, 1]) and np.all(np.isnan(back[1, 256:512]))
    assert np.all(np.isfinite(back[1, :256])) and np.all(np.isfinite(back[1, 512:]))
    assert np.all(np.isfinite(back[0]))


def test_a_bad_absmax_shape_is_refused(rng):
    codes, absmax = ref.quantize_blockwise(rng.normal(size=(4, 300)), signed=True)
    with pytest.raises(ValueError, match="absmax shape"):
        ref.dequantize_blockwise(codes, absmax[:, :1], signed=True)


def test_one_step_from_the_same_state_matches_bitsandbytes_rmsprop8bit(rng):
    """bitsandbytes' own test of its 8-bit optimizers (tests/test_optim.py) runs 50 steps,
    each from the 32-bit-state optimizer's... here: 50 steps, each from bitsandbytes' current
    state (codes, absmax, weights), with its settings (the signed map for ms, epsilon outside
    the square root, L2 weight decay: our `pytorch` preset without momentum), and its
    thresholds for the weights: mean absolute error < 6e-5, mean relative < 6e-4."""
    shape = (64, 1024)  # rows of 4 whole blocks: its flat blocks and our row blocks coincide
    hyper = dict(lr=0.01, rho=0.9, epsilon=1e-8, weight_decay=0.01,
                 epsilon_placement="outside_sqrt", weight_decay_mode="coupled")
    p = torch.nn.Parameter(torch.tensor(rng.normal(size=shape) * 0.1, dtype=torch.float32))
    opt = bnb_optim.RMSprop8bit([p], lr=hyper["lr"], alpha=hyper["rho"], eps=hyper["epsilon"],
                                weight_decay=hyper["weight_decay"])
    abs_err, rel_err, code_diff = [], [], []
    t = ref.dynamic_map(True).astype(np.float64)
    for _ in range(50):
        # gradients over four decades, so that epsilon (1e-8 against sqrt(ms)) matters for some
        g = rng.normal(size=shape) * 10.0 ** rng.uniform(-6, -1, size=shape)
        state = opt.state[p]
        before = (p.detach().numpy().copy(),
                  None if not state else (state["state1"].numpy().reshape(shape).copy(),
                                          state["absmax1"].numpy().reshape(64, 4).copy()))
        p.grad = torch.tensor(g, dtype=torch.float32)
        opt.step()
        state = opt.state[p]
        ms = before[1] if before[1] is not None else (
            np.full(shape, 127, np.uint8), np.zeros((64, 4), np.float32))  # zeros, signed map
        want = ref.rmsprop_x_step_8bit(before[0], np.float32(g), ms, ms_signed=True, **hyper)
        got = p.detach().numpy().astype(np.float64)
        abs_err.append(np.mean(np.abs(got - want["var"])))
        rel_err.append(np.mean(np.abs(got - want["var"]) / (np.abs(want["var"]) + 1e-8)))
        # The new state: absmax within float32 rounding (bitsandbytes computes the state in
        # float32, the reference in float64); each value within one LUT bin (its quantizer)
        # plus one map gap around our code (the two states may straddle a midpoint).
        codes, absmax = want["ms"]
        np.testing.assert_allclose(state["absmax1"].numpy().reshape(absmax.shape), absmax,
                                   rtol=4e-7)
        theirs = ref.dequantize_blockwise(state["state1"].numpy().reshape(shape),
                                          state["absmax1"].numpy().reshape(absmax.shape), True)
        ours = ref.dequantize_blockwise(codes, absmax, True)
        c = codes.astype(np.int64)
        gap = np.maximum(t[np.minimum(c + 1, 255)] - t[c], t[c] - t[np.maximum(c - 1, 0)])
        scale = _norm_scale(ours, absmax)
        bad = ~(np.abs(theirs - ours) <= scale * (LUT_BIN * 1.0001 + gap) * (1 + 1e-6))
        assert not bad.any(), (theirs[bad][:3], ours[bad][:3])
        code_diff.append(np.mean(state["state1"].numpy().reshape(shape) != codes))
    assert max(abs_err) < 6e-5 and max(rel_err) < 6e-4, (max(abs_err), max(rel_err))


def test_the_unsigned_map_keeps_ms_closer_to_float32_state_than_bitsandbytes_signed_map(rng):
    n_in, n_out, batch = 64, 80, 32
    w_true = rng.normal(size=(n_in, n_out))
    w0 = rng.normal(size=(n_in, n_out)) * 0.1
    xs = [rng.normal(size=(batch, n_in)) for _ in range(200)]
    hyper = dict(lr=1e-3, rho=0.9, epsilon=1e-7)
    finals = {}
    for mode in ("float", "unsigned", "signed"):
        w = w0.copy()
        ms = np.zeros_like(w) if mode == "float" else ref.quantize_blockwise(
            np.zeros_like(w), signed=(mode == "signed"))
        for x in xs:
            g = np.float32(x.T @ (x @ w - x @ w_true) / batch)
            if mode == "float":
                new = ref.rmsprop_x_step(w, g, ms, **hyper)
            else:
                new = ref.rmsprop_x_step_8bit(w, g, ms, ms_signed=(mode == "signed"), **hyper)
            w, ms = new["var"], new["ms"]
        finals[mode] = w
    err = {m: np.linalg.norm(finals[m] - finals["float"]) / np.linalg.norm(finals["float"])
           for m in ("unsigned", "signed")}
    # measured over 30 seeds: unsigned 1.50e-3..1.65e-3, signed 2.91e-3..3.26e-3, their
    # ratio 0.45..0.53 (the bounds leave 1.4x and 3x)
    assert err["unsigned"] < 0.75 * err["signed"], err
    assert err["unsigned"] < 5e-3, err


def test_the_sparse_8bit_step_touches_only_the_named_rows(rng):
    shape = (50, 300)  # rows of two blocks (256 + 44)
    var = rng.normal(size=shape)
    ms = ref.quantize_blockwise(rng.uniform(0.5, 2.0, size=shape) * 1e-4, signed=False)
    mom = ref.quantize_blockwise(rng.normal(size=shape) * 1e-3, signed=True)
    idx = np.array([3, 17, 3, 49, 0])
    grad = rng.normal(size=(5, 300)) * 1e-2
    hyper = dict(lr=0.01, rho=0.9, momentum=0.9, epsilon=1e-7)
    out = ref.sparse_rmsprop_x_step_8bit(var, grad, idx, ms, mom, **hyper)
    named = np.zeros(50, bool)
    named[idx] = True
    for k, q in (("ms", ms), ("mom", mom)):
        np.testing.assert_array_equal(out[k][0][~named], q[0][~named])
        np.testing.assert_array_equal(out[k][1][~named], q[1][~named])
    np.testing.assert_array_equal(out["var"][~named], var[~named])
    # a named row is the dense 8-bit step of that row with its summed gradient
    for r in np.unique(idx):
        dense = ref.rmsprop_x_step_8bit(var[r:r + 1], grad[idx == r].sum(0)[None],
                                        (ms[0][r:r + 1], ms[1][r:r + 1]),
                                        (mom[0][r:r + 1], mom[1][r:r + 1]), **hyper)
        np.testing.assert_array_equal(out["var"][r], dense["var"][0])
        np.testing.assert_array_equal(out["ms"][0][r], dense["ms"][0][0])
    with pytest.raises(ValueError, match="rank >= 2"):
        ref.sparse_rmsprop_x_step_8bit(var[0], grad[:, 0], idx, ms, **hyper)


@pytest.mark.parametrize("signed", [True, False])
def test_every_lookup_bucket_of_the_kernels_holds_at_most_one_midpoint(signed):
    """cc/state8.h finds a code from the top 16 bits of x / absmax (sign, exponent 2^-26 ..
    2^0, 7 mantissa bits) plus one comparison with the next midpoint: exact only if no
    bucket holds two midpoints, and if nothing below 2^-26 reaches one."""
    t = ref.dynamic_map(signed)
    mids = (t[:-1] + t[1:]) / np.float32(2)
    assert np.min(np.abs(mids)) > 2.0 ** -26
    for sign in (0, 1):
        e = np.arange(101, 128, dtype=np.uint32)[:, None]
        m = np.arange(128, dtype=np.uint32)[None, :]
        first = ((np.uint32(sign) << 31) | (e << 23) | (m << 16)).ravel()
        ends = np.stack([first, first | np.uint32(0xFFFF)]).view(np.float32)
        lo, hi = np.sort(ends, axis=0)
        inside = np.searchsorted(mids, hi, side="right") - np.searchsorted(mids, lo, side="right")
        assert inside.max() <= 1
