"""Concurrent updates of shared variables: Python threads and inter-op parallel tf.functions.

With use_locking=True every concurrent run must equal some serial order of the same calls.
The inputs are chosen so that EVERY order gives the same bits: rho = 1 (ms and mg stay
constant), epsilon = 0, no momentum, a variance that is an exact square (0.25, 1, 4, 16: its
square root is exact), gradients and lr powers of two and var on a grid of 2**-7 well inside
float32's 24 bits, so every partial sum var0 - sum(lr * g / sqrt(v)) is exact. The expected
value is then independent of the order; it is computed in float64 and checked to be exactly
representable in float32, and the variable must hold exactly those bits. A lost update, an
update applied twice or a torn write changes them. Those inputs keep ms and mg constant, so a
second locked test moves every slot: the same call (momentum, centered, rho < 1, weight
decay, float32 and float16) from every thread and function, where every serial order is the
same computation, against as many calls in a row on a copy: var, ms, mom and mg must have
the same bits. (With use_locking=False that test fails: checked.) The threads start their
loops together (a barrier).

With use_locking=False nothing may crash and every element must end at var0 - k * step for a
whole k in [0, n] (updates may be lost, never torn or garbage), and nothing outside the
updated elements may change (ms, untouched rows, a canary variable created next to var).

The sparse op runs in both of TF's access modes of the table: the default one (the update
takes the variable's lock exclusively) and copy-on-read, where use_locking=False takes a
shared lock (Hogwild!: concurrent updates may really be lost there).

The tf.functions take the resource handles as K separate arguments: automatic control
dependencies serialise ops by handle tensor, so K distinct placeholders leave the K calls
unordered and the executor runs them on its inter-op threads (the process default).
"""
import threading

import numpy as np
import pytest
import tensorflow as tf

import tf_rmsprop_ops
from tf_rmsprop_ops import RMSpropX, ops

LR = 2.0 ** -4
HYPER = dict(lr=LR, rho=1.0, momentum=0.0, epsilon=0.0, weight_decay=0.0)
POW2 = np.array([-2.0, -1.0, -0.5, 0.5, 1.0, 2.0])
THREADS = 4
JOIN_TIMEOUT_S = 120


# ---- exact, order-independent inputs -------------------------------------------------------

def _exact_state(rng, shape, centered):
    """var on a 2**-7 grid, a variance that is an exact square, ms = v (+ mg**2)."""
    v = rng.choice([0.25, 1.0, 4.0, 16.0], shape)
    mg = rng.choice(POW2, shape) if centered else None
    return {"var": rng.integers(-2 ** 12, 2 ** 12, shape) * 2.0 ** -7,
            "ms": v + (mg * mg if centered else 0.0), "mg": mg, "sqrt_v": np.sqrt(v)}


def _make(state):
    out = {k: tf.Variable(state[k].astype(np.float32)) for k in ("var", "ms", "mg")
           if state[k] is not None}
    return out


def _assert_exact_in_float32(expected):
    assert np.array_equal(expected.astype(np.float32).astype(np.float64), expected), \
        "test construction: the expected value is not exact in float32"


def _check_exact(variables, state, expected_var):
    _assert_exact_in_float32(expected_var)
    got = variables["var"].numpy()
    assert got.dtype == np.float32
    wrong = np.flatnonzero(got.astype(np.float64) != expected_var)
    assert wrong.size == 0, (
        f"{wrong.size} of {got.size} elements differ from every serial order, e.g. element "
        f"{wrong[0]}: got {got.flat[wrong[0]]}, want {expected_var.flat[wrong[0]]} "
        f"(start {state['var'].flat[wrong[0]]})")
    for k in ("ms", "mg"):  # rho = 1: the slots keep their bits
        if k in variables:
            np.testing.assert_array_equal(variables[k].numpy(), state[k].astype(np.float32),
                                          err_msg=k)


def _run_threads(target, n=THREADS):
    errors = []
    start = threading.Barrier(n)  # the loops start together, so the calls overlap

    def wrapped(t):
        try:
            start.wait(JOIN_TIMEOUT_S)
            target(t)
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=wrapped, args=(t,), daemon=True) for t in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT_S)
    assert not any(t.is_alive() for t in threads), "deadlock: a thread did not finish"
    if errors:
        raise errors[0]


# ---- the three ops, each as "K unordered calls in one tf.function" and as eager calls ------

class _Dense:
    """ApplyRMSpropX on a [N] variable."""

    def __init__(self, rng, centered, size=100_000):
        self.state = _exact_state(rng, (size,), centered)
        self.vars = _make(self.state)
        self.shape = (size,)

    def new_call(self, rng):
        return rng.choice(POW2, self.shape)  # the gradient

    def step_of(self, grad):
        return LR * grad / self.state["sqrt_v"]

    def eager(self, grad, use_locking):
        v = self.vars
        tf_rmsprop_ops.apply_rmsprop_x(v["var"], v["ms"], tf.constant(grad, tf.float32),
                                       mg=v.get("mg"), use_locking=use_locking, **HYPER)

    def function(self, k, use_locking):
        """A tf.function running k calls without any order between them."""
        v = self.vars

        @tf.function(autograph=False)
        def run(handles, grads):
            for (var, ms, mg), grad in zip(handles, grads):
                tf_rmsprop_ops.apply_rmsprop_x(var, ms, grad, mg=mg, use_locking=use_locking,
                                               **HYPER)

        handles = [(v["var"].handle, v["ms"].handle, v["mg"].handle if "mg" in v else None)] * k
        run.get_concrete_function(handles, [tf.TensorSpec(self.shape, tf.float32)] * k)
        return lambda calls: run(handles, [tf.constant(g, tf.float32) for g in calls])


class _Sparse:
    """SparseApplyRMSpropX on a [rows, 3] table; indices overlap between calls and repeat
    within a call (a repeated row sums its gradient rows: still a multiple of 2**-7)."""

    def __init__(self, rng, centered, rows=5000, n=50_000, copy_on_read=False):
        self.state = _exact_state(rng, (rows, 3), centered)
        self.vars = _make(self.state)
        self.rows, self.n = rows, n
        if copy_on_read:  # TF's sparse access mode (sticky): an empty scatter switches it
            for var in self.vars.values():
                var.scatter_add(tf.IndexedSlices(tf.zeros((0, 3)), tf.zeros([0], tf.int64)))

    def new_call(self, rng):
        hot = rng.integers(0, self.rows, self.n // 8)  # many repeats of a few rows
        indices = np.where(rng.random(self.n) < 0.5, rng.choice(hot, self.n),
                           rng.integers(0, self.rows, self.n))
        return indices, rng.choice(POW2, (self.n, 3))

    def step_of(self, call):
        indices, grad = call
        summed = np.zeros((self.rows, 3))
        np.add.at(summed, indices, grad)
        return LR * summed / self.state["sqrt_v"]

    def eager(self, call, use_locking):
        v = self.vars
        tf_rmsprop_ops.sparse_apply_rmsprop_x(v["var"], v["ms"], tf.constant(call[1], tf.float32),
                                              tf.constant(call[0]), mg=v.get("mg"),
                                              use_locking=use_locking, **HYPER)

    def function(self, k, use_locking):
        v = self.vars

        @tf.function(autograph=False)
        def run(handles, calls):
            for (var, ms, mg), (indices, grad) in zip(handles, calls):
                tf_rmsprop_ops.sparse_apply_rmsprop_x(var, ms, grad, indices, mg=mg,
                                                      use_locking=use_locking, **HYPER)

        handles = [(v["var"].handle, v["ms"].handle, v["mg"].handle if "mg" in v else None)] * k
        spec = (tf.TensorSpec([self.n], tf.int64), tf.TensorSpec([self.n, 3], tf.float32))
        run.get_concrete_function(handles, [spec] * k)
        return lambda calls: run(handles, [(tf.constant(i, tf.int64), tf.constant(g, tf.float32))
                                           for i, g in calls])


class _Multi:
    """ApplyRMSpropXMulti over overlapping subsets of four variables (one of them large
    enough to be split between threads): each call updates three of the four."""

    SHAPES = [(3000,), (50, 7), (1,), (70_000,)]

    def __init__(self, rng, centered):
        self.states = [_exact_state(rng, s, centered) for s in self.SHAPES]
        self.all_vars = [_make(s) for s in self.states]
        self.centered = centered

    def new_call(self, rng):
        skip = int(rng.integers(0, len(self.SHAPES)))
        return {i: rng.choice(POW2, s) for i, s in enumerate(self.SHAPES) if i != skip}

    def step_of(self, call):
        return [LR * call[i] / s["sqrt_v"] if i in call else np.zeros(s["var"].shape)
                for i, s in enumerate(self.states)]

    def _slots(self, i):
        v = self.all_vars[i]
        return [v["ms"]] + ([v["mg"]] if self.centered else [])

    def eager(self, call, use_locking):
        ids = sorted(call)
        ops.apply_rmsprop_x_multi(
            [self.all_vars[i]["var"] for i in ids], [self._slots(i) for i in ids],
            [tf.constant(call[i], tf.float32) for i in ids], centered=self.centered,
            use_locking=use_locking, **HYPER)

    def function(self, k, use_locking, subsets=None):
        """k unordered multi calls; call j updates the variables subsets[j] (default: all
        but variable j). The returned callable takes k calls with those keys."""
        subsets = subsets or [[i for i in range(len(self.SHAPES)) if i != j] for j in range(k)]

        @tf.function(autograph=False)
        def run(handles, grads):
            for (vs, slots), gs in zip(handles, grads):
                ops.apply_rmsprop_x_multi(vs, slots, gs, centered=self.centered,
                                          use_locking=use_locking, **HYPER)

        handles = [([self.all_vars[i]["var"].handle for i in ids],
                    [[s.handle for s in self._slots(i)] for i in ids]) for ids in subsets]
        run.get_concrete_function(handles, [[tf.TensorSpec(self.SHAPES[i], tf.float32)
                                             for i in ids] for ids in subsets])

        def call(calls):
            assert [sorted(c) for c in calls] == [sorted(ids) for ids in subsets]
            run(handles, [[tf.constant(c[i], tf.float32) for i in sorted(c)] for c in calls])
        return call

    def calls_for_function(self, rng, k):
        return [{i: rng.choice(POW2, s) for i, s in enumerate(self.SHAPES) if i != j}
                for j in range(k)]


def _new_calls(op, rng, k):
    if isinstance(op, _Multi):
        return op.calls_for_function(rng, k)
    return [op.new_call(rng) for _ in range(k)]


def _make_op(kind, rng, centered):
    if kind == "dense":
        return _Dense(rng, centered)
    if kind == "sparse":
        return _Sparse(rng, centered)
    if kind == "sparse_copy_on_read":
        return _Sparse(rng, centered, copy_on_read=True)
    return _Multi(rng, centered)


OPS = ["dense", "sparse", "sparse_copy_on_read", "multi"]


# ---- use_locking=True: equal to a serial order ----------------------------------------------

@pytest.mark.parametrize("centered", [False, True], ids=["plain", "centered"])
@pytest.mark.parametrize("kind", OPS)
def test_locked_concurrent_updates_equal_every_serial_order(kind, centered, rng):
    """THREADS Python threads, each running 3 times a tf.function of 4 unordered calls and
    one eager call, all on the same variables (4 * 3 * 5 = 60 calls)."""
    op = _make_op(kind, rng, centered)
    k, repeats = 4, 3
    run_k = op.function(k, use_locking=True)
    # Every call's inputs, fixed before the threads start: [thread][repeat] -> (k calls, 1).
    plan = [[(_new_calls(op, rng, k), op.new_call(rng)) for _ in range(repeats)]
            for _ in range(THREADS)]

    def worker(t):
        for many, one in plan[t]:
            run_k(many)
            op.eager(one, use_locking=True)

    _run_threads(worker)
    calls = [c for per_thread in plan for many, one in per_thread for c in many + [one]]
    assert len(calls) == THREADS * repeats * (k + 1)
    if kind == "multi":
        for i, (state, variables) in enumerate(zip(op.states, op.all_vars)):
            expected = state["var"] - sum(op.step_of(c)[i] for c in calls)
            _check_exact(variables, state, expected)
    else:
        expected = op.state["var"] - sum(op.step_of(c) for c in calls)
        _check_exact(op.vars, op.state, expected)


def test_graph_functions_from_threads_without_eager_calls(rng):
    """Only tf.functions, more calls per function: the executor's inter-op parallelism
    alone (dense, plain)."""
    op = _Dense(rng, centered=False, size=100_000)
    k = 8
    run_k = op.function(k, use_locking=True)
    plan = [[_new_calls(op, rng, k) for _ in range(2)] for _ in range(2)]
    _run_threads(lambda t: [run_k(many) for many in plan[t]], n=2)
    expected = op.state["var"] - sum(op.step_of(c) for per in plan for many in per for c in many)
    _check_exact(op.vars, op.state, expected)


# ---- use_locking=True with every slot moving: the same call from everyone --------------------

FULL = dict(lr=0.01, rho=0.9, momentum=0.9, epsilon=1e-3, weight_decay=0.01,
            weight_decay_mode="coupled")
SLOTS = ("ms", "mom", "mg")


class _Same:
    """N copies of one call (momentum, centered, rho < 1, weight decay): every serial order
    of identical calls is the same computation, so a locked concurrent run must end with the
    bits of N calls made one after another, in var and in every slot. A lost, doubled or
    torn read-modify-write of any of the four arrays changes them."""

    SHAPES = {"dense": [(60_000,)], "sparse": [(3000, 8)], "sparse_copy_on_read": [(3000, 8)],
              "multi": [(3000,), (50, 7), (1,), (70_000,)]}

    def __init__(self, kind, rng, dtype):
        self.kind, self.dtype = kind, dtype
        self.inits = [{"var": rng.normal(size=s), "ms": rng.uniform(0.5, 1.5, s),
                       "mom": rng.normal(scale=0.1, size=s), "mg": rng.normal(scale=0.1, size=s)}
                      for s in self.SHAPES[kind]]
        if kind.startswith("sparse"):
            rows = self.SHAPES[kind][0][0]
            self.indices = tf.constant(rng.integers(0, rows, 5000))  # duplicates included
            self.grads = [tf.constant(rng.normal(size=(5000, 8)) * 10.0 ** rng.integers(
                -4, 1, (5000, 1)), dtype)]
        else:
            self.grads = [tf.constant(rng.normal(size=s) * 10.0 ** rng.integers(-4, 1, s), dtype)
                          for s in self.SHAPES[kind]]

    def variables(self):
        out = [{k: tf.Variable(v.astype(self.dtype.as_numpy_dtype)) for k, v in init.items()}
               for init in self.inits]
        if self.kind == "sparse_copy_on_read":
            for v in out[0].values():
                v.scatter_add(tf.IndexedSlices(tf.zeros((0, 8), self.dtype),
                                               tf.zeros([0], tf.int64)))
        return out

    def apply(self, vs, use_locking=True):
        """One call; `vs` holds variables or their handles."""
        if self.kind == "multi":
            ops.apply_rmsprop_x_multi([v["var"] for v in vs], [[v[k] for k in SLOTS] for v in vs],
                                      self.grads, use_momentum=True, centered=True,
                                      use_locking=use_locking, **FULL)
        elif self.kind == "dense":
            v = vs[0]
            tf_rmsprop_ops.apply_rmsprop_x(v["var"], v["ms"], self.grads[0], mom=v["mom"],
                                           mg=v["mg"], use_locking=use_locking, **FULL)
        else:
            v = vs[0]
            tf_rmsprop_ops.sparse_apply_rmsprop_x(v["var"], v["ms"], self.grads[0], self.indices,
                                                  mom=v["mom"], mg=v["mg"],
                                                  use_locking=use_locking, **FULL)

    def function(self, vs, k):
        """k unordered calls in one tf.function (k separate handle arguments)."""
        @tf.function(autograph=False)
        def run(handle_sets):
            for handles in handle_sets:
                self.apply(handles)

        handle_sets = [[{n: v.handle for n, v in d.items()} for d in vs] for _ in range(k)]
        run.get_concrete_function(handle_sets)
        return lambda: run(handle_sets)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("kind", OPS)
def test_locked_identical_calls_move_every_slot_as_a_serial_run(kind, dtype, rng):
    """THREADS threads, each 3 times: a tf.function of 4 unordered calls and an eager call
    (60 calls), against 60 eager calls in a row on a second copy: the same bits in var, ms,
    mom and mg."""
    same = _Same(kind, rng, dtype)
    shared, serial = same.variables(), same.variables()
    k, repeats = 4, 3
    run_k = same.function(shared, k)

    def worker(_):
        for _ in range(repeats):
            run_k()
            same.apply(shared)

    _run_threads(worker)
    for _ in range(THREADS * repeats * (k + 1)):
        same.apply(serial)
    # Test construction: every state moved somewhere (not in each variable: a one-element
    # float16 variable lands back on its first bits in about 1 run in 3000).
    def moved(want, init):
        w = want.numpy()
        return not np.array_equal(w.astype(np.float64), init.astype(w.dtype).astype(np.float64))

    for name in ("var",) + SLOTS:
        assert any(moved(want[name], init[name]) for want, init in zip(serial, same.inits)), \
            f"test construction: {name} did not move"
    for i, (got, want) in enumerate(zip(shared, serial)):
        for name in ("var",) + SLOTS:
            np.testing.assert_array_equal(got[name].numpy(), want[name].numpy(),
                                          err_msg=f"variable {i}, {name}: not a serial result")


# ---- use_locking=False: lost updates allowed, torn or stray writes not ------------------------

@pytest.mark.parametrize("kind", OPS)
def test_unlocked_concurrent_updates_lose_whole_steps_at_most(kind, rng):
    """The same call n times from threads and unordered graph calls: each element ends at
    var0 - k * step with a whole k in [0, n]; ms, untouched rows and a canary keep their
    bits."""
    canary_before = tf.Variable(rng.uniform(-1, 1, (4096,)).astype(np.float32))
    op = _make_op(kind, rng, centered=False)
    canary_after = tf.Variable(rng.uniform(-1, 1, (4096,)).astype(np.float32))
    canaries = [(c, c.numpy().copy()) for c in (canary_before, canary_after)]
    k, repeats = 4, 3
    if kind == "multi":  # every call updates all four variables
        call = {i: rng.choice(POW2, s) for i, s in enumerate(op.SHAPES)}
        run_k = op.function(k, use_locking=False, subsets=[sorted(call)] * k)
    else:
        call = op.new_call(rng)
        run_k = op.function(k, use_locking=False)
    calls = [call] * k
    if kind.startswith("sparse"):
        # The same (index, gradient row) pairs in k orders: the same step for every row,
        # but concurrent calls reach a row at different times (Hogwild! races are likely).
        calls = [(call[0][p], call[1][p]) for p in (rng.permutation(op.n) for _ in range(k))]

    def worker(t):
        for _ in range(repeats):
            run_k(calls)
            op.eager(calls[t % k], use_locking=False)

    _run_threads(worker)
    n = THREADS * repeats * (k + 1)
    pairs = (zip(op.states, op.all_vars, op.step_of(call)) if kind == "multi"
             else [(op.state, op.vars, op.step_of(call))])
    for state, variables, step in pairs:
        got = variables["var"].numpy().astype(np.float64)
        moved = step != 0
        np.testing.assert_array_equal(got[~moved], state["var"][~moved],
                                      err_msg="an element without a gradient changed")
        count = (state["var"][moved] - got[moved]) / step[moved]
        whole = np.round(count)
        bad = np.flatnonzero((count != whole) | (whole < 0) | (whole > n))
        assert bad.size == 0, (f"{bad.size} elements are not var0 - k*step with k in [0, {n}]:"
                               f" e.g. k = {count[bad[:5]]}")
        np.testing.assert_array_equal(variables["ms"].numpy(), state["ms"].astype(np.float32))
    for canary, before in canaries:
        np.testing.assert_array_equal(canary.numpy(), before, err_msg="canary changed")


# ---- the optimizer from several threads -------------------------------------------------------

def test_optimizer_applied_from_several_threads(rng):
    """RMSpropX(rho=0, epsilon=0): ms = g*g and the step is lr * sign(g), so with |g| fixed
    per element and random signs per call every order gives the same bits. Three dense
    variables (one multi-tensor call) and a table updated by IndexedSlices (unique rows)."""
    dense_shapes, table_rows = [(300,), (20, 5), (1,)], 500
    init = [rng.integers(-2 ** 10, 2 ** 10, s) * LR for s in dense_shapes]
    init.append(rng.integers(-2 ** 10, 2 ** 10, (table_rows, 4)) * LR)
    magnitude = [2.0 ** rng.integers(-3, 3, x.shape) for x in init]
    variables = [tf.Variable(x.astype(np.float32)) for x in init]
    opt = RMSpropX(learning_rate=LR, rho=0.0, epsilon=0.0)
    opt.build(variables)
    calls_per_thread = 6
    plan = []  # [thread][call] -> (dense signs, table rows, table signs)
    for _ in range(THREADS):
        plan.append([([rng.choice([-1.0, 1.0], s) for s in dense_shapes],
                      rng.permutation(table_rows)[:60], rng.choice([-1.0, 1.0], (60, 4)))
                     for _ in range(calls_per_thread)])

    def worker(t):
        for signs, rows, row_signs in plan[t]:
            grads = [tf.constant(s * m, tf.float32) for s, m in zip(signs, magnitude)]
            grads.append(tf.IndexedSlices(tf.constant(row_signs * magnitude[-1][rows],
                                                      tf.float32), tf.constant(rows)))
            opt.apply_gradients(zip(grads, variables))

    _run_threads(worker)
    assert int(opt.iterations.numpy()) == THREADS * calls_per_thread
    total = [np.zeros(x.shape) for x in init]
    touched = np.zeros(table_rows, bool)
    for per_thread in plan:
        for signs, rows, row_signs in per_thread:
            for i, s in enumerate(signs):
                total[i] += s
            total[-1][rows] += row_signs
            touched[rows] = True
    for i, (x, var) in enumerate(zip(init, variables)):
        got = var.numpy()
        assert np.all(np.isfinite(got)), f"variable {i}: non-finite values"
        expected = x - LR * total[i]
        _assert_exact_in_float32(expected)
        np.testing.assert_array_equal(got.astype(np.float64), expected, err_msg=f"variable {i}")
        ms = opt.get_slot(var, "ms").numpy().astype(np.float64)
        want_ms = magnitude[i] ** 2
        if i == len(init) - 1:
            want_ms = np.where(touched[:, None], want_ms, 0.0)
        np.testing.assert_array_equal(ms, want_ms, err_msg=f"ms of variable {i}")
