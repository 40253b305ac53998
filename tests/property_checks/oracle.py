"""The contract of the ops, and the oracle that judges a call's results by it.

The contract ("oracle") of every call: either
  (a) it succeeds, and var and every slot equal the float64 reference
      (tf_rmsprop_ops.reference, on the dtype-rounded inputs) within the rounding error of
      the kernel's compute type: an error bound is carried through the formula beside the
      float64 value (unit roundoff and underflow of float32 for float16/bfloat16/float32,
      of float64 for float64; the result rounded to the variable's dtype), times 4; NaN must
      be NaN and inf the same inf. Elements whose value the bound cannot determine (a
      denominator that rounding may make 0) are counted as `unverified_elements`; so are
      elements whose computation may leave the compute type's range (`overflow_elements`:
      there the result depends on how the compiler fused a*b + c, e.g. fma(-mg, mg, inf) is
      inf where unfused inf - inf is NaN).
      TensorFlow runs its kernels with flush-to-zero and denormals-are-zero: results that
      match only when subnormals are read or written as 0 are counted as `ftz_only` (a
      note, not a violation, unless TF_RMSPROP_OPS_PROPERTY_STRICT_SUBNORMALS=1).
  (b) it raises InvalidArgumentError / FailedPreconditionError (ValueError / TypeError from
      Python or at graph construction) naming one of the problems the case holds, and var
      and every slot are bit-identical to before. A message that names the problem only in
      TensorFlow's generic words (e.g. a graph-mode shape mismatch, or the eager "input #7
      was expected to be a float tensor") is a note (`generic_message`).
Cases where either outcome is right: a negative subnormal hyperparameter (denormals-are-zero
reads it as -0: `negative_subnormal_accepted` when the op accepts it), a handle passed to
DestroyResourceOp while the eager variable still holds the resource. The optimizer family
also checks that constructor arguments outside the documented ranges raise ValueError
naming them, that the slots start at initial_scale and 0 in the variable's dtype
(`slot_initial_value`), and that a step that raises leaves every variable, slot and
`iterations` unchanged; elements whose var an earlier step made inf/NaN are checked too
(the kernels select away the terms a variant lacks, so IEEE propagation holds).

Violation kinds: mismatch, accepted_invalid, unexpected_rejection, wrong_error_type,
message_missing_name, state_changed, slot_initial_value, harness_error (a bug here).

Here: the formula evaluated in float64 beside a bound on its rounding error in the compute
type (Bounded, evaluate), the float64 reference (reference_step, sparse_center), and the
judgement of a call's new state (check_step, check_sparse, check_sparse_opt, into a Verdict).
A rejected call is judged by runners.Runner.judge_rejection, against faults.Problem.
"""
import math
import os

import numpy as np

from tf_rmsprop_ops import reference


SAFETY = 4.0  # the error bound is first-order rigorous; this covers what it neglects

STRICT_SUBNORMALS = os.environ.get("TF_RMSPROP_OPS_PROPERTY_STRICT_SUBNORMALS") == "1"
# Sabotage switch, to check that the oracle is not vacuous (tests/test_properties.py
# documents it): the reference's lr times (1 + x). (The other one is in runners.py.)
SABOTAGE_LR = float(os.environ.get("TF_RMSPROP_OPS_PROPERTY_SABOTAGE_LR", "0"))


# ---- the error-bounded evaluation of the formula ---------------------------------------------

def _pm(p, q):
    """p * q for (nonnegative) error terms, with 0 * inf = 0."""
    return np.fmax(np.multiply(p, q), 0.0)


class Bounded:
    """Arithmetic on (x, e, unk, ovf): x the float64 value of an expression; e a bound on the
    error of evaluating it in the compute type (unit roundoff u, underflow eta, and with
    `ftz` the flushing of subnormal operands and results); unk where the result is not
    determined (a denominator the error may make 0); ovf where an intermediate may leave the
    compute type's range (then the bound does not hold)."""

    def __init__(self, compute, ftz=False):
        fi = np.finfo(compute)
        self.u, self.eta = float(fi.eps) / 2, float(fi.smallest_subnormal)
        self.tiny = float(fi.smallest_normal) if ftz else 0.0
        self.max = float(fi.max)

    def leaf(self, x, e=0.0):
        x = np.asarray(x, np.float64)
        return self._finish(x, np.zeros_like(x) + e, np.zeros(x.shape, bool), np.zeros(x.shape, bool))

    def _finish(self, x, e, unk, ovf):
        ax = np.abs(x)
        ovf = ovf | (ax + e > self.max)
        if self.tiny:  # may be (or round to) a subnormal, flushed to 0
            e = e + np.where((x != 0) & (ax < 2 * self.tiny + e), ax, 0.0)
        return x, e, unk, ovf

    def add(self, a, b):
        x = a[0] + b[0]
        e = a[1] + b[1] + _pm(self.u, np.abs(x))
        return self._finish(x, e, a[2] | b[2], a[3] | b[3])

    def sub(self, a, b):
        return self.add(a, (-b[0], b[1], b[2], b[3]))

    def mul(self, a, b):
        x = a[0] * b[0]
        e = (_pm(np.abs(a[0]), b[1]) + _pm(np.abs(b[0]), a[1]) + _pm(a[1], b[1])
             + _pm(self.u, np.abs(x)) + np.where((a[0] != 0) & (b[0] != 0), self.eta, 0.0))
        return self._finish(x, e, a[2] | b[2], a[3] | b[3])

    def div(self, a, b):
        x = a[0] / b[0]
        ab = np.abs(b[0])
        exact_zero = (ab == 0) & (b[1] == 0)
        # 0/0 (NaN) or a/0 (inf): which one is open when a may be 0 or not
        unk = np.where(exact_zero, (a[1] >= np.abs(a[0])) & (a[1] > 0), b[1] >= ab)
        e = (a[1] + _pm(np.abs(x), b[1])) / np.where(ab > b[1], ab - b[1], 1.0) \
            + _pm(self.u, np.abs(x)) + np.where(a[0] != 0, self.eta, 0.0)
        e = np.where(np.isfinite(x), e, 0.0)
        return self._finish(x, e, a[2] | b[2] | unk, a[3] | b[3])

    def sqrt(self, a):
        x = np.sqrt(a[0])
        pos = a[0] > 0
        e = np.where(pos, np.minimum(a[1] / np.where(pos, x, 1.0), np.sqrt(a[1])), np.sqrt(a[1]))
        e = e + _pm(self.u, np.where(np.isfinite(x), x, 0.0))
        unk = (a[0] < 0) & (a[0] + a[1] >= 0)
        return self._finish(x, e, a[2] | unk, a[3])

    def maxz(self, a):
        x = np.maximum(a[0], 0.0)  # NaN stays NaN
        e = np.where(a[0] < 0, np.maximum(a[0] + a[1], 0.0), a[1])
        return x, e, a[2], a[3]


def evaluate(A, state, grad, hyper, attrs, grad_err=0.0, hyper_err=None):
    """The RMSpropX formula in the arithmetic A, in the kernel's association order
    (cc/rmsprop_x_update.h: ms = rho*ms + (1-rho)*(g*g), decoupled wd var -= (lr*wd)*var).
    `grad_err`, `hyper_err`: error bounds the inputs already carry (summed duplicate rows;
    the optimizer's float32 bias-correction folding)."""
    hyper_err = hyper_err or {}
    h = {k: A.leaf(v, hyper_err.get(k, 0.0)) for k, v in hyper.items()}
    var, ms = A.leaf(state["var"]), A.leaf(state["ms"])
    g = A.leaf(grad, grad_err)
    mom = A.leaf(state["mom"]) if state.get("mom") is not None else None
    mg = A.leaf(state["mg"]) if state.get("mg") is not None else None
    if attrs["weight_decay_mode"] == "coupled":
        g = A.add(g, A.mul(h["weight_decay"], var))
    one_minus_rho = A.sub(A.leaf(1.0), h["rho"])
    ms = A.add(A.mul(h["rho"], ms), A.mul(one_minus_rho, A.mul(g, g)))
    v = ms
    if mg is not None:
        mg = A.add(A.mul(h["rho"], mg), A.mul(one_minus_rho, g))
        v = A.maxz(A.sub(ms, A.mul(mg, mg)))
    if attrs["epsilon_placement"] == "inside_sqrt":
        denom = A.sqrt(A.add(v, h["epsilon"]))
    else:
        denom = A.add(A.sqrt(v), h["epsilon"])
    step = A.div(g, denom)
    lr = h["lr"]
    if mom is not None:
        if attrs["lr_placement"] == "inside_momentum":
            mom = A.add(A.mul(h["momentum"], mom), A.mul(lr, step))
            upd = A.add(A.mul(h["momentum"], mom), A.mul(lr, step)) if attrs["nesterov"] else mom
        else:
            mom = A.add(A.mul(h["momentum"], mom), step)
            upd = A.mul(lr, A.add(A.mul(h["momentum"], mom), step) if attrs["nesterov"] else mom)
    else:
        upd = A.mul(lr, step)
    if attrs["weight_decay_mode"] == "decoupled":
        var = A.sub(var, A.mul(A.mul(lr, h["weight_decay"]), var))
    var = A.sub(var, upd)
    return {"var": var, "ms": ms, "mom": mom, "mg": mg}


def reference_step(state, grad, hyper, attrs, bias_step=None):
    hyper = dict(hyper)
    if SABOTAGE_LR:
        hyper["lr"] = hyper["lr"] * (1 + SABOTAGE_LR)
    f64 = {k: None if v is None else np.asarray(v, np.float64) for k, v in state.items()}
    return reference.rmsprop_x_step(
        f64["var"], np.asarray(grad, np.float64), f64["ms"], f64.get("mom"), f64.get("mg"),
        **hyper, nesterov=attrs["nesterov"], epsilon_placement=attrs["epsilon_placement"],
        lr_placement=attrs["lr_placement"], weight_decay_mode=attrs["weight_decay_mode"],
        bias_correction_step=bias_step)


def _judge_elements(got, center, num, dt):
    """Elementwise: does `got` (storage dtype) lie within the bound around `center`?"""
    x, e, unk, ovf = (np.broadcast_to(a, center.shape) for a in num)
    g = np.asarray(got, np.float64)
    ok = unk.copy()
    ok |= np.isnan(center) & np.isnan(g)
    ok |= np.isinf(center) & (g == center)
    fin = np.isfinite(center) & np.isfinite(e)
    lo = dt.round(np.where(fin, center - SAFETY * e, 0.0))
    hi = dt.round(np.where(fin, center + SAFETY * e, 0.0))
    lo = lo - dt.ulp(lo)
    hi = hi + dt.ulp(hi)
    ok |= fin & (g >= lo) & (g <= hi)
    return ok, ovf | (np.isfinite(center) & ~np.isfinite(e))


class Verdict:
    def __init__(self):
        self.ok = True
        self.ftz_only = 0
        self.unverified = 0
        self.checked = 0
        self.overflow_elements = 0
        self.lost_var = 0
        self.detail = None


def check_step(got, state, grad, hyper, attrs, dt, center, grad_err=0.0, hyper_err=None,
               rows=None, verdict=None, what="", grad_err_ftz=None):
    """Checks the new state `got` (name -> storage array) of the elements in `state`
    against `center` (the reference's new state) with the error bound of the formula."""
    verdict = verdict or Verdict()
    compute = dt.compute
    names = [n for n in ("var", "ms", "mom", "mg") if center.get(n) is not None]
    strict = evaluate(Bounded(compute), state, grad, hyper, attrs, grad_err, hyper_err)
    # A var that is already inf/NaN (an earlier optimizer step overflowed) is checked like
    # any other element: the kernels select away the terms a variant lacks (no 0 * inf).
    lost = np.zeros(np.shape(state["var"]), bool)
    bad = {}
    for n in names:
        ok, ovf = _judge_elements(got[n], center[n], strict[n], dt)
        ok = ok | lost
        verdict.unverified += int(np.count_nonzero(np.broadcast_to(strict[n][2], ok.shape)))
        verdict.checked += int(ok.size)
        if not ok.all():
            bad[n] = (ok, ovf)
    if not bad:
        return verdict
    ftz = evaluate(Bounded(compute, ftz=True), state, grad, hyper, attrs,
                   grad_err if grad_err_ftz is None else grad_err_ftz, hyper_err)
    for n, (ok, ovf) in bad.items():
        ok2, ovf2 = _judge_elements(got[n], center[n], ftz[n], dt)
        ok2 = ok2 | lost
        # An intermediate may leave the compute type's range: the float64 reference does not
        # apply, and neither does the formula evaluated in the compute type in another order
        # (XLA may contract a*b + c into FMAs: fma(-mg, mg, inf) is inf where mg*mg alone
        # overflows and inf - inf is NaN). The value is implementation-defined: counted.
        fall = ~ok & ~ok2 & (ovf | ovf2)
        if fall.any():
            verdict.overflow_elements += int(np.count_nonzero(fall))
            ok = ok | fall
        only_ftz = ~ok & ok2
        if only_ftz.any():
            verdict.ftz_only += int(np.count_nonzero(only_ftz))
            if STRICT_SUBNORMALS:
                ok2 = ok2 & ~only_ftz
            ok = ok | ok2
        if not ok.all():
            verdict.ok = False
            idx = np.argwhere(~ok)[:4]
            rows_note = [] if rows is None else [int(rows[i[0]]) for i in idx]
            cases = []
            for i in idx:
                i = tuple(int(k) for k in i)
                cases.append(dict(index=i, got=_num(np.asarray(got[n], np.float64)[i]),
                                  want=_num(center[n][i]),
                                  bound=_num(SAFETY * np.broadcast_to(strict[n][1], ok.shape)[i]),
                                  inputs={k: _num(np.asarray(v, np.float64)[i]) for k, v in state.items()
                                          if v is not None} | {"grad": _num(np.asarray(grad, np.float64)[i])}))
            verdict.detail = dict(what=f"{what}{n}", bad_elements=int(np.count_nonzero(~ok)),
                                  of=int(ok.size), rows=rows_note, examples=cases)
            return verdict
    return verdict


def _num(x):
    x = float(x)
    return x if math.isfinite(x) else repr(x)


# ---- sparse steps: the duplicates' gradient rows summed --------------------------------------

def sparse_center(state, grad, indices, hyper, attrs):
    """The reference's new state: reference.sparse_rmsprop_x_step (a Python loop over the
    unique rows), or for more than 8 rows the same: rmsprop_x_step on the gathered rows
    with the duplicates' gradient rows summed (faster, vectorised)."""
    uniq = np.unique(indices)
    if len(uniq) <= 8:
        h = dict(hyper)
        if SABOTAGE_LR:
            h["lr"] = h["lr"] * (1 + SABOTAGE_LR)
        f64 = {k: None if v is None else np.asarray(v, np.float64) for k, v in state.items()}
        return reference.sparse_rmsprop_x_step(
            f64["var"], np.asarray(grad, np.float64), indices, f64["ms"], f64.get("mom"),
            f64.get("mg"), **h, nesterov=attrs["nesterov"],
            epsilon_placement=attrs["epsilon_placement"], lr_placement=attrs["lr_placement"],
            weight_decay_mode=attrs["weight_decay_mode"])
    g = np.zeros((len(uniq),) + grad.shape[1:])
    np.add.at(g, np.searchsorted(uniq, indices), np.asarray(grad, np.float64))
    rows_state = {k: None if v is None else np.asarray(v, np.float64)[uniq] for k, v in state.items()}
    new = reference_step(rows_state, g, hyper, attrs)
    out = {}
    for k, v in state.items():
        if v is None:
            out[k] = None
            continue
        full = np.asarray(v, np.float64).copy()
        full[uniq] = new[k]
        out[k] = full
    return out


def _untouched_rows_kept(got, state, indices, verdict, what):
    """Rows not named: bit-identical, slots included; else `verdict` fails, naming the
    first array with a changed row."""
    rows = state["var"].shape[0] if state["var"].ndim else 0
    untouched = np.setdiff1d(np.arange(rows), indices)
    for n, v in got.items():
        if np.asarray(v)[untouched].tobytes() != np.asarray(state[n])[untouched].tobytes():
            verdict.ok = False
            verdict.detail = dict(what=f"{what}{n}: an untouched row changed")
            return False
    return True


def _summed_rows(grad, indices, dt):
    """The unique rows named, their gradient rows summed in float64, and the error bounds of
    the kernel's sums (`_sum_errors`)."""
    uniq, inverse, counts = np.unique(indices, return_inverse=True, return_counts=True)
    gsum = np.zeros((len(uniq),) + grad.shape[1:])
    np.add.at(gsum, inverse, np.asarray(grad, np.float64))
    gerr, gerr_ftz = _sum_errors(grad, inverse, counts, len(uniq), dt)
    return uniq, gsum, gerr, gerr_ftz


def check_sparse(got, state, grad, indices, hyper, attrs, dt, verdict=None, what=""):
    verdict = verdict or Verdict()
    center = sparse_center(state, grad, indices, hyper, attrs)
    if not _untouched_rows_kept(got, state, indices, verdict, what):
        return verdict
    if len(indices) == 0 or grad.size == 0:
        return verdict
    uniq, gsum, gerr, gerr_ftz = _summed_rows(grad, indices, dt)
    sub_state = {k: None if v is None else np.asarray(v)[uniq] for k, v in state.items()}
    sub_got = {k: np.asarray(v)[uniq] for k, v in got.items()}
    sub_center = {k: None if v is None else v[uniq] for k, v in center.items()}
    return check_step(sub_got, sub_state, gsum, hyper, attrs, dt, sub_center, grad_err=gerr,
                      rows=uniq, verdict=verdict, what=what, grad_err_ftz=gerr_ftz)


def _sum_errors(grad, inverse, counts, n_unique, dt):
    """Error bounds of the kernel's sums of duplicated rows (in the compute type, in input
    order): (k - 1) u sum|g| for k rows; with flush-to-zero also every subnormal row element
    (read as 0) and a flushed partial sum per addition."""
    g64 = np.abs(np.asarray(grad, np.float64))
    fi = np.finfo(dt.compute)
    u, tiny = float(fi.eps) / 2, float(fi.smallest_normal)
    shape = (n_unique,) + grad.shape[1:]
    gabs, sub = np.zeros(shape), np.zeros(shape)
    np.add.at(gabs, inverse, g64)
    np.add.at(sub, inverse, np.where(g64 < tiny, g64, 0.0))
    k = (counts - 1).reshape((-1,) + (1,) * (grad.ndim - 1))
    err = np.where(k > 0, _pm(k * u, gabs), 0.0)
    # a partial sum may overflow where the whole does not: then the bound does not hold
    err = np.where((k > 0) & (gabs > float(fi.max)), np.inf, err)
    return err, err + np.where(k > 0, sub + k * tiny, 0.0)


# ---- the optimizer's steps -------------------------------------------------------------------

def flushed_cast(x, dt):
    """A float32 tensor value (the learning-rate variable, a folded scalar) as tf.cast hands
    it to an op of dtype `dt`: TensorFlow's CPU kernels run with denormals-are-zero, so a
    float32 subnormal becomes (signed) 0 in any other dtype."""
    if dt.name != "float32" and x != 0 and abs(x) < float(np.finfo(np.float32).tiny):
        return math.copysign(0.0, x)
    return x


def check_sparse_opt(got, state, grad, indices, h, herr, attrs, dt, h_ref, bias_step, verdict, what):
    """A sparse optimizer step: the reference per row (bias correction included)."""
    if bias_step is None:
        return check_sparse(got, state, grad, indices, h, attrs, dt, verdict, what)
    if not _untouched_rows_kept(got, state, indices, verdict, what):
        return verdict
    if len(indices) == 0:
        return verdict
    uniq, g, gerr, gerr_ftz = _summed_rows(grad, indices, dt)
    sub = {k: None if v is None else np.asarray(v)[uniq] for k, v in state.items()}
    center = reference_step(sub, g, h_ref, attrs, bias_step)
    return check_step({k: np.asarray(v)[uniq] for k, v in got.items()}, sub, g, h, attrs, dt, center,
                      grad_err=gerr, hyper_err=herr, rows=uniq, verdict=verdict, what=what,
                      grad_err_ftz=gerr_ftz)
