"""One runner per family (RUNNERS). A runner builds the variables a spec names (reused from a
Pool), applies the spec's fault, makes the call and judges the outcome: a rejection must be
one of the call's problems (faults.py), naming it, with the state unchanged; a success must
match the reference (oracle.py). Stats counts it all for the worker's PROPERTY_SUMMARY."""
import collections
import json
import math
import os
import re
import time

import numpy as np
import tensorflow as tf
from tensorflow.python.ops import resource_variable_ops

import tf_rmsprop_ops
from tf_rmsprop_ops import ops as tfx_ops
from tf_rmsprop_ops import keras as tfx_keras
import keras
from tf_rmsprop_ops._library import ops as raw

from .faults import (FP, GENERIC_SHAPE, GENERIC_TYPE, IA, MISSING, Problem, hyper_problems,
                     message_of, optimizer_ctor_problems)
from .generators import build_grad, build_indices, build_state
from .oracle import (Verdict, _num, check_sparse, check_sparse_opt, check_step, flushed_cast,
                     reference_step)
from .spec import DTYPES, HYPER_NAMES, slot_names


# Sabotage switch, to check that the oracle is not vacuous (tests/test_properties.py
# documents it): a rejected call's first variable written (+1) before the unchanged-state
# check, as a half-applied update would. (The other one is in oracle.py.)
SABOTAGE_UNCHANGED = os.environ.get("TF_RMSPROP_OPS_PROPERTY_SABOTAGE_UNCHANGED") == "1"


# ---- variables -------------------------------------------------------------------------------

class Pool:
    """Variables of unknown shape, per dtype, reused by assigning new values."""

    def __init__(self):
        self.vars = collections.defaultdict(list)

    def take(self, dtname, k, used):
        pool = self.vars[dtname]
        i = used.get(dtname, 0)
        while len(pool) < i + k:
            pool.append(tf.Variable(tf.zeros([0], DTYPES[dtname].tf), shape=tf.TensorShape(None)))
        used[dtname] = i + k
        return pool[i:i + k]


def assign(variable, array):
    """variable = array (TF's AssignVariableOp: 4x cheaper than Variable.assign)."""
    if not hasattr(variable, "handle"):  # an optimizer's flat state: its range of a buffer
        variable.assign(array)
        return
    tf.raw_ops.AssignVariableOp(resource=variable.handle, value=array)


def read(variable):
    if not hasattr(variable, "handle"):  # an optimizer's flat state: its range of a buffer
        return variable.numpy()
    return tf.raw_ops.ReadVariableOp(resource=variable.handle, dtype=variable.dtype).numpy()


class Tracked:
    """A variable passed to a call, with the bytes it must still hold if the call fails."""

    def __init__(self, variable, array, readable=True, label=""):
        self.variable, self.array, self.readable, self.label = variable, array, readable, label

    @property
    def handle(self):
        return self.variable.handle if hasattr(self.variable, "handle") else self.variable


def fresh(value, dtname, graph=False):
    arr = np.asarray(value)
    if graph:
        return tf.Variable(arr, dtype=DTYPES[dtname].tf)
    return tf.Variable(arr, dtype=DTYPES[dtname].tf, shape=tf.TensorShape(None))


_counter = [0]


def special_handle(kind, dtname, shape, array=None):
    """A handle of a variable that is uninitialised / never created / destroyed."""
    dtype = DTYPES[dtname].tf
    _counter[0] += 1
    if kind == "uninitialised":
        v = resource_variable_ops.UninitializedVariable(shape=shape, dtype=dtype)
        return Tracked(v, None, readable=False, label=kind)
    if kind == "never_assigned":
        h = resource_variable_ops.var_handle_op(dtype=dtype, shape=shape,
                                                shared_name=f"property_never_{_counter[0]}")
        return Tracked(h, None, readable=False, label=kind)
    if kind == "destroyed":
        h = resource_variable_ops.var_handle_op(dtype=dtype, shape=shape,
                                                shared_name=f"property_destroyed_{_counter[0]}")
        resource_variable_ops.assign_variable_op(h, tf.constant(array, dtype))
        resource_variable_ops.destroy_resource_op(h, ignore_lookup_error=False)
        return Tracked(h, None, readable=False, label=kind)
    # destroyed_eager: an eager variable whose handle was passed to DestroyResourceOp (its
    # handle keeps the resource alive in TF2: a call may succeed)
    v = tf.Variable(array, dtype=dtype, shape=tf.TensorShape(None))
    resource_variable_ops.destroy_resource_op(v.handle, ignore_lookup_error=True)
    return Tracked(v, array, readable=True, label=kind)


# ---- the runner ------------------------------------------------------------------------------

class Stats:
    def __init__(self, family):
        self.family = family
        self.c = collections.Counter()
        self.violations = []
        self.notes = collections.defaultdict(list)
        self.problem_kinds = collections.Counter()
        self._seen = set()

    def violation(self, kind, spec, **detail):
        self.c["violations"] += 1
        self.c[f"violation:{kind}"] += 1
        if len(self.violations) < 25:
            self.violations.append(dict(kind=kind, spec=spec, detail=detail,
                                        replay=f"python tests/property_worker.py replay '{json.dumps(spec)}'"))

    def note(self, kind, spec, **detail):
        self.c[f"note:{kind}"] += 1
        if kind == "generic_message":  # one example per kind of message
            key = re.sub(r"[0-9]+", "N", detail["message"])[:48]
            if key not in self._seen and len(self.notes[kind]) < 12:
                self._seen.add(key)
                self.notes[kind].append(dict(spec=spec, detail=detail))
        elif len(self.notes[kind]) < 3:
            self.notes[kind].append(dict(spec=spec, detail=detail))

    def summary(self, seconds):
        c = self.c
        return dict(family=self.family, calls=c["calls"], hypothesis_calls=c["hypothesis_calls"],
                    optimizer_apply_calls=c["apply_calls"], keras_cases=c["keras_cases"],
                    module_cases=c["module_cases"],
                    succeeded_and_matched=c["matched"], rejected=c["rejected"],
                    rejected_but_state_changed=c["violation:state_changed"],
                    mismatches=c["violation:mismatch"], violations=c["violations"],
                    violation_kinds={k[10:]: v for k, v in c.items() if k.startswith("violation:")},
                    notes={k[5:]: v for k, v in c.items() if k.startswith("note:")},
                    unverified_elements=c["unverified_elements"], checked_elements=c["checked_elements"],
                    verdict_calls=c["verdict_calls"],
                    mostly_unverified_calls=c["mostly_unverified_calls"],
                    problems_generated=dict(self.problem_kinds), seconds=round(seconds, 1),
                    cpu_seconds=round(time.process_time(), 1),
                    first_violations=self.violations, note_examples=dict(self.notes))


def outcome_of(fn):
    try:
        fn()
        return None
    except (IA, FP, ValueError, TypeError, tf.errors.OpError) as e:
        return e


class Runner:
    def __init__(self, stats):
        self.stats = stats
        self.pool = Pool()

    def common_faults(self, kind, fault, problems, state_set, dt, var_shape, used, grad,
                      grad_arg):
        """The faults the dense and sparse families share (gradient dtype, hyperparameter
        dtype and rank, nesterov without momentum, slot count, not a resource): appends their
        problems and returns (the variables passed, the tracked ones, the gradient to pass)."""
        if kind == "grad_dtype":
            grad_arg = tf.constant(DTYPES[fault["dtype"]].array(np.asarray(grad, np.float64)),
                                   DTYPES[fault["dtype"]].tf)
            problems.append(Problem(kind, ["grad", "dtype"], generic=GENERIC_TYPE))
        if kind == "hyper_dtype":
            problems.append(Problem(kind, [fault["name"], "dtype"], generic=GENERIC_TYPE))
        if kind == "hyper_nonscalar":
            problems.append(Problem(kind, [f"{fault['name']} must be a scalar"],
                                    generic=GENERIC_SHAPE))
        if kind == "nesterov_without_momentum":
            problems.append(Problem(kind, ["nesterov"]))
        passed = state_set.passed()
        if kind == "slot_count":
            if fault["delta"] < 0:
                passed = passed[:-1]
            else:
                extra = self.pool.take(dt.name, 1, used)[0]
                arr = dt.array(np.full(var_shape, 0.25))
                assign(extra, arr)
                passed = passed + [Tracked(extra, arr, label="extra slot")]
            problems.append(Problem("slot_count", ["slot"], generic=("num_slots",)))
        if kind == "not_resource":
            problems.append(Problem("not_resource", [fault["which"]]))
        self.stats.problem_kinds.update(p.kind for p in problems)
        return passed, _tracked_unique(passed), grad_arg

    @staticmethod
    def wrapper_variables(kind, fault, state, names, passed):
        """(var, ms, {mom, mg}) for the Python wrappers; a `not_resource` fault passes a
        plain array in place of one of them."""
        kw = {n: t.variable for n, t in zip(names, passed[1:])}
        ms = kw.pop("ms")
        var = passed[0].variable
        if kind == "not_resource":
            if fault["which"] == "var":
                var = state["var"]
            elif fault["which"] == "ms":
                ms = state["ms"]
            else:
                kw[fault["which"]] = state[fault["which"]]
        return var, ms, kw

    def outcome(self, spec, call, graph, problems, tracked, passed, names):
        """Runs `call`: judges a rejection, or returns var and the slots as they are now
        (None when the call was rejected or its success was not allowed)."""
        exc = outcome_of(_in_graph(call) if graph else call)
        if exc is not None:
            self.judge_rejection(spec, exc, problems, tracked)
            return None
        if not self.accepted(spec, problems):
            return None
        got = {n: read(passed[i].variable) for i, n in enumerate(["var"] + names)}
        self.stats.c["checked_elements"] += sum(int(np.size(v)) for v in got.values())
        return got

    # A rejected call: the error must be one of the problems', naming it; nothing written.
    def judge_rejection(self, spec, exc, problems, tracked):
        st = self.stats
        st.c["rejected"] += 1
        msg = message_of(exc)
        if not problems:
            st.violation("unexpected_rejection", spec, error=type(exc).__name__, message=msg[:500])
        else:
            allowed = [p for p in problems if isinstance(exc, p.errors)]
            if not allowed:
                st.violation("wrong_error_type", spec, error=type(exc).__name__, message=msg[:500],
                             expected=[repr(p) for p in problems])
            else:
                low = msg.lower()
                if not any(w.lower() in low for p in allowed for w in p.words):
                    if any(w.lower() in low for p in allowed for w in p.generic):
                        st.note("generic_message", spec, message=msg[:300],
                                problems=[repr(p) for p in problems])
                    else:
                        st.violation("message_missing_name", spec, error=type(exc).__name__,
                                     message=msg[-600:],  # TF puts its text after the trace
                                     expected=[repr(p) for p in problems])
        self.check_unchanged(spec, tracked)

    def check_unchanged(self, spec, tracked):
        if SABOTAGE_UNCHANGED:  # pretend the kernel wrote before it failed
            for t in tracked:
                if t.readable and t.array is not None and t.array.size:
                    assign(t.variable, t.array + t.array.dtype.type(1))
                    break
        for t in tracked:
            if not t.readable or t.array is None:
                continue
            after = read(t.variable)
            if after.shape != t.array.shape or after.tobytes() != t.array.tobytes():
                self.stats.violation("state_changed", spec, variable=t.label,
                                     before=_preview(t.array), after=_preview(after))
                return

    def accepted(self, spec, problems):
        for p in problems:
            if p.kind == "maybe" and p.note:
                self.stats.note(p.note, spec)
        real = [p for p in problems if p.kind != "maybe"]
        if real:
            self.stats.violation("accepted_invalid", spec, problems=[repr(p) for p in real])
            return False
        return True

    def record_verdict(self, spec, v):
        st = self.stats
        st.c["unverified_elements"] += v.unverified
        st.c["verdict_calls"] += 1
        if v.checked and 2 * v.unverified > v.checked:
            st.c["mostly_unverified_calls"] += 1
        if v.ftz_only:
            st.note("ftz_only", spec, elements=v.ftz_only)
        if v.lost_var:
            st.note("nonfinite_var_input", spec, elements=v.lost_var)
        if v.overflow_elements:
            st.note("overflow_elements", spec, elements=v.overflow_elements)
        if v.ok:
            st.c["matched"] += 1
        else:
            st.violation("mismatch", spec, **v.detail)


def _preview(a):
    a = np.asarray(a)
    return dict(shape=list(a.shape), head=[_num(x) for x in a.reshape(-1)[:6].astype(np.float64)])


def hyper_tensors(spec, dt, fault):
    out = {}
    for name in HYPER_NAMES:
        value = dt.array(spec["hyper"][name])
        tdt = dt
        if fault.get("kind") == "hyper_dtype" and fault["name"] == name:
            tdt = DTYPES[fault["dtype"]]
            value = tdt.array(spec["hyper"][name])
        if fault.get("kind") == "hyper_nonscalar" and fault["name"] == name:
            value = np.full(fault["shape"], value, tdt.np)
        out[name] = tf.constant(value, tdt.tf)
    return out


def wrapper_attrs(attrs):
    """The formula attrs a single-variable wrapper takes as keywords (its slots say which
    of momentum and centered are on)."""
    return {name: attrs[name] for name in ("nesterov", "epsilon_placement", "lr_placement",
                                           "weight_decay_mode", "use_locking")}


def wrapper_hyper(spec, dt, fault):
    out = {}
    for name in HYPER_NAMES:
        x = spec["hyper"][name]
        r = float(dt.round(x))
        value = x if (math.isfinite(x) and not math.isfinite(r)) else r  # overflow stays a Python float
        if fault.get("kind") == "hyper_nonscalar" and fault["name"] == name:
            value = np.full(fault["shape"], dt.array(r))
        out[name] = value
    return out


def effective_hyper(spec, dt):
    return {k: float(dt.round(v)) for k, v in spec["hyper"].items()}


class StateSet:
    """The variables of one variable's update (var and its enabled slots), with faults applied.
    `passed` lists what goes to the op in order (var, slots...)."""

    def __init__(self, runner, spec, dt, attrs, shape, state, fault, used, graph=False, label=""):
        names = slot_names(attrs)
        kind = fault.get("kind")
        self.names = names
        self.tracked = {}
        if graph:
            variables = [fresh(state[n], dt.name, graph=True) for n in ["var"] + names]
        else:
            variables = runner.pool.take(dt.name, 1 + len(names), used)
            for v, n in zip(variables, ["var"] + names):
                assign(v, state[n])
        for v, n in zip(variables, ["var"] + names):
            self.tracked[n] = Tracked(v, state[n], label=f"{label}{n}")
        self.problems = []
        if kind == "slot_shape" and fault.get("i", 0) == spec.get("_i", 0):
            n = names[fault["slot"]]
            arr = dt.array(np.ones(fault["shape"]) * 0.5)
            v = fresh(arr, dt.name, graph) if graph else runner.pool.take(dt.name, 1, used)[0]
            if not graph:
                assign(v, arr)
            self.tracked[n] = Tracked(v, arr, label=f"{label}{n}(bad shape)")
            self.problems.append(Problem("slot_shape", [f"slot '{n}'", f"'{n}' of", "slot"],
                                         generic=GENERIC_SHAPE))
        if kind in ("var_dtype", "slot_dtype") and fault.get("i", 0) == spec.get("_i", 0):
            n = "var" if kind == "var_dtype" else names[fault["slot"]]
            odt = DTYPES[fault["dtype"]]
            if kind == "var_dtype" and spec["api"] in ("wrapper", "graph"):
                # the wrappers take T from the variable: the hyperparameters are checked as
                # that dtype holds them (before the variables are)
                self.problems += [Problem("maybe", p.words) for p in hyper_problems(spec["hyper"], odt)]
            arr = odt.array(np.asarray(state[n], np.float64))
            v = fresh(arr, odt.name, graph) if graph else runner.pool.take(odt.name, 1, used)[0]
            if not graph:
                assign(v, arr)
            self.tracked[n] = Tracked(v, arr, label=f"{label}{n}(dtype {odt.name})")
            self.problems.append(Problem(kind, ["dtype"], generic=GENERIC_TYPE))
        if kind == "alias" and fault.get("i", 0) == spec.get("_i", 0):
            n = names[fault["slot"]]
            self.tracked[n] = self.tracked[fault["target"]]
            self.problems.append(Problem("alias", ["same variable"]))
        if kind in ("uninitialised", "never_assigned", "destroyed", "destroyed_eager") \
                and fault.get("i", 0) == spec.get("_i", 0):
            n = fault["which"]
            t = special_handle(kind, dt.name, shape, state[n])
            t.label = f"{label}{n}({kind})"
            self.tracked[n] = t
            if kind == "uninitialised":
                self.problems.append(Problem(kind, ["uninitialised", "uninitialized"], MISSING))
            elif kind == "destroyed_eager":
                self.problems.append(Problem("maybe", ["not an existing"], MISSING))
            else:
                self.problems.append(Problem(kind, ["not an existing"], MISSING))

    def passed(self):
        return [self.tracked[n] for n in ["var"] + self.names]


def _tracked_unique(ts):
    seen, out = set(), []
    for t in ts:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


class DenseRunner(Runner):
    def run(self, spec):
        dt = DTYPES[spec["dtype"]]
        attrs, shape, fault = spec["attrs"], tuple(spec["shape"]), spec.get("fault", {})
        kind = fault.get("kind")
        api = spec["api"]
        graph = api == "graph"
        state = build_state(spec["values"], shape, dt, attrs)
        grad = build_grad(spec["values"], shape, dt)
        used = {}
        s = StateSet(self, spec, dt, attrs, shape, state, fault, used, graph=graph)
        problems = hyper_problems(spec["hyper"], dt) + s.problems
        grad_arg = grad
        if kind == "grad_shape":
            grad_arg = dt.array(np.ones(fault["shape"]))
            problems.append(Problem("grad_shape", ["grad"], generic=GENERIC_SHAPE))
        passed, tracked, grad_arg = self.common_faults(kind, fault, problems, s, dt, shape, used,
                                                       grad, grad_arg)

        def call():
            if api == "raw" or (graph and not graph_wrapper(spec)):
                h = hyper_tensors(spec, dt, fault)
                g = grad_arg if isinstance(grad_arg, tf.Tensor) else tf.constant(grad_arg, dt.tf)
                return raw.apply_rm_sprop_x(var=passed[0].handle, slots=[t.handle for t in passed[1:]],
                                            **h, grad=g, **attrs)
            var, ms, kw = self.wrapper_variables(kind, fault, state, s.names, passed)
            if not attrs["use_momentum"]:
                kw.pop("mom", None)
            return tf_rmsprop_ops.apply_rmsprop_x(
                var, ms, grad_arg, **wrapper_hyper(spec, dt, fault), **kw,
                **wrapper_attrs(attrs))

        got = self.outcome(spec, call, graph, problems, tracked, passed, s.names)
        if got is None:
            return
        hyper = effective_hyper(spec, dt)
        center = reference_step(state, grad, hyper, attrs)
        self.record_verdict(spec, check_step(got, state, grad, hyper, attrs, dt, center))


def graph_wrapper(spec):
    """Graph-mode cases call the public wrapper (its static index check) or the raw op."""
    return spec["values"]["seed"] % 2 == 1


def _in_graph(call):
    def run():
        call()  # traced: shape functions and static checks run here (ValueError/TypeError)

    return lambda: tf.function(run, autograph=False)()


class SparseRunner(Runner):
    def run(self, spec):
        dt = DTYPES[spec["dtype"]]
        attrs, fault = spec["attrs"], spec.get("fault", {})
        kind = fault.get("kind")
        api = spec["api"]
        graph = api == "graph"
        rows, row_shape, n = spec["rows"], tuple(spec["row_shape"]), spec["n"]
        var_shape = (rows,) + row_shape
        if kind == "scalar_var":
            var_shape = ()
        state = build_state(spec["values"], var_shape, dt, attrs)
        grad = build_grad(spec["values"], (n,) + row_shape, dt)
        indices = build_indices(spec)
        used = {}
        s = StateSet(self, spec, dt, attrs, var_shape, state, fault, used, graph=graph)
        problems = hyper_problems(spec["hyper"], dt) + s.problems
        grad_arg, idx_arg = grad, indices
        idt = np.int32 if spec["index_dtype"] == "int32" else np.int64
        if rows == 0 and n > 0 and kind != "scalar_var":
            problems.append(Problem("oob", ["indices[0] = 0 is not in [0, 0)"]))
        if kind == "oob":
            if n == 0:
                idx_arg = np.asarray([fault["value"]], np.int64)
                grad_arg = dt.array(np.ones((1,) + row_shape))
            else:
                idx_arg = indices.copy()
                idx_arg[min(fault["at"], n - 1)] = fault["value"]
            first = int(np.flatnonzero((idx_arg < 0) | (idx_arg >= rows))[0])
            problems.append(Problem("oob", [f"indices[{first}] = {idx_arg[first]}"]))
        if kind == "indices_rank":
            idx_arg = np.asarray(indices).reshape(-1, 1) if n else np.zeros((1, 0), np.int64)
            problems.append(Problem(kind, ["indices"], generic=GENERIC_SHAPE))
        if kind == "grad_rows":
            grad_arg = dt.array(np.ones((fault["rows"],) + row_shape))
            problems.append(Problem(kind, ["grad"], generic=GENERIC_SHAPE))
        if kind == "grad_row_shape":
            grad_arg = dt.array(np.ones((n,) + tuple(fault["shape"])))
            if tuple(fault["shape"]) != row_shape:
                problems.append(Problem(kind, ["grad"], generic=GENERIC_SHAPE))
        if kind == "grad_scalar":
            grad_arg = dt.array(1.0)
            problems.append(Problem(kind, ["grad"], generic=GENERIC_SHAPE))
        if kind == "scalar_var":
            problems.append(Problem(kind, ["var must have rank"], generic=GENERIC_SHAPE))
            if n > 0 or row_shape:
                problems.append(Problem("maybe", ["grad"], generic=GENERIC_SHAPE))
        if kind == "grad_shape":
            grad_arg = dt.array(np.ones(fault["shape"]))
            gs = tuple(fault["shape"])
            if len(gs) == 0:
                problems.append(Problem(kind, ["grad"], generic=GENERIC_SHAPE))
            elif gs[0] != len(idx_arg) or gs[1:] != row_shape:
                problems.append(Problem(kind, ["grad"], generic=GENERIC_SHAPE))
        passed, tracked, grad_arg = self.common_faults(kind, fault, problems, s, dt, var_shape,
                                                       used, grad, grad_arg)
        idx_arg = np.asarray(idx_arg).astype(idt)  # (int64-only values are drawn for int64)

        def call():
            if api == "raw" or (graph and not graph_wrapper(spec)):
                h = hyper_tensors(spec, dt, fault)
                g = grad_arg if isinstance(grad_arg, tf.Tensor) else tf.constant(grad_arg, dt.tf)
                return raw.sparse_apply_rm_sprop_x(
                    var=passed[0].handle, slots=[t.handle for t in passed[1:]], **h, grad=g,
                    indices=tf.constant(idx_arg), **attrs)
            var, ms, kw = self.wrapper_variables(kind, fault, state, s.names, passed)
            return tf_rmsprop_ops.sparse_apply_rmsprop_x(
                var, ms, grad_arg, idx_arg if idx_arg.size % 2 else list(idx_arg.tolist()),
                **wrapper_hyper(spec, dt, fault), **kw,
                **wrapper_attrs(attrs))

        got = self.outcome(spec, call, graph, problems, tracked, passed, s.names)
        if got is None:
            return
        hyper = effective_hyper(spec, dt)
        self.record_verdict(spec, check_sparse(got, state, grad, indices, hyper, attrs, dt))


class MultiRunner(Runner):
    def run(self, spec):
        dt = DTYPES[spec["dtype"]]
        attrs, fault = spec["attrs"], spec.get("fault", {})
        kind = fault.get("kind")
        api = spec["api"]
        shapes = [tuple(s) for s in spec["shapes"]]
        used = {}
        sets, states, grads = [], [], []
        problems = hyper_problems(spec["hyper"], dt)
        for i, shape in enumerate(shapes):
            state = build_state(spec["values"][i], shape, dt, attrs, salt=i)
            grad = build_grad(spec["values"][i], shape, dt, salt=i)
            s = StateSet(self, dict(spec, _i=i), dt, attrs, shape, state, fault, used,
                         label=f"vars[{i}]/")
            problems += s.problems
            sets.append(s)
            states.append(state)
            grads.append(grad)
        names = slot_names(attrs)
        var_list = [s.tracked["var"] for s in sets]
        slot_lists = [[s.tracked[nm] for nm in names] for s in sets]
        grad_args = list(grads)
        i = fault.get("i", 0)
        if kind == "duplicate_var":
            var_list[fault["j"]] = var_list[i]
            problems.append(Problem(kind, ["same variable"]))
        if kind == "var_as_slot":
            slot_lists[i][fault["slot"]] = var_list[fault["j"]]
            problems.append(Problem(kind, ["same variable"]))
        if kind == "shared_slot":
            slot_lists[fault["j"]][fault["slot"]] = slot_lists[i][fault["slot"]]
            problems.append(Problem(kind, ["same variable"]))
        if kind == "grad_shape":
            grad_args[i] = dt.array(np.ones(fault["shape"]))
            problems.append(Problem(kind, [f"grads[{i}]"], generic=GENERIC_SHAPE))
        if kind == "grad_dtype":
            odt = DTYPES[fault["dtype"]]
            grad_args[i] = tf.constant(odt.array(np.asarray(grads[i], np.float64)), odt.tf)
            problems.append(Problem(kind, ["grad", "dtype"], generic=GENERIC_TYPE))
        if kind == "hyper_dtype":
            problems.append(Problem(kind, [fault["name"], "dtype"], generic=GENERIC_TYPE))
        if kind == "hyper_nonscalar":
            problems.append(Problem(kind, [f"{fault['name']} must be a scalar"], generic=GENERIC_SHAPE))
        if kind == "nesterov_without_momentum":
            problems.append(Problem(kind, ["nesterov"]))
        if kind == "grads_count":
            if fault["delta"] < 0:
                grad_args = grad_args[:-1]
            else:
                grad_args = grad_args + [grads[-1]]
            problems.append(Problem(kind, ["grads", "gradient"], generic=("inputs specified",)))
        flat_slots = [t for group in slot_lists for t in group]
        num_slots_attr = len(names)
        if kind == "slots_count":
            if fault["delta"] < 0:
                flat_slots = flat_slots[:-1]
                slot_lists[-1] = slot_lists[-1][:-1]
            else:
                extra = self.pool.take(dt.name, 1, used)[0]
                arr = dt.array(np.full(shapes[-1], 0.25))
                assign(extra, arr)
                t = Tracked(extra, arr, label="extra slot")
                flat_slots = flat_slots + [t]
                slot_lists[-1] = slot_lists[-1] + [t]
            problems.append(Problem(kind, ["slots", "slot"]))
        if kind == "slot_count":  # the num_slots attr disagrees with centered/use_momentum
            num_slots_attr = len(names) + fault["delta"]
            if num_slots_attr < 1:
                num_slots_attr = len(names) + 1
            problems.append(Problem(kind, ["slot"], generic=("num_slots",)))
        tracked = _tracked_unique(var_list + flat_slots)
        self.stats.problem_kinds.update(p.kind for p in problems)

        def call():
            if api == "raw":
                h = hyper_tensors(spec, dt, fault)
                gs = [g if isinstance(g, tf.Tensor) else tf.constant(g, dt.tf) for g in grad_args]
                return raw.apply_rm_sprop_x_multi(
                    vars=[t.handle for t in var_list], slots=[t.handle for t in flat_slots], **h,
                    grads=gs, num_slots=num_slots_attr, **attrs)
            return tfx_ops.apply_rmsprop_x_multi(
                [t.variable for t in var_list], [[t.variable for t in g] for g in slot_lists],
                grad_args, **wrapper_hyper(spec, dt, fault), **attrs)

        exc = outcome_of(call)
        if exc is not None:
            return self.judge_rejection(spec, exc, problems, tracked)
        if not self.accepted(spec, problems):
            return
        hyper = effective_hyper(spec, dt)
        # Every variable, flattened and concatenated: one reference and bound evaluation.
        got, state, grad = {}, {}, []
        for nm in ["var"] + names:
            got[nm] = np.concatenate([read(s.tracked[nm].variable).reshape(-1) for s in sets])
            state[nm] = np.concatenate([st[nm].reshape(-1) for st in states])
        for nm in ("mom", "mg"):
            state.setdefault(nm, None)
        grad = np.concatenate([g.reshape(-1) for g in grads])
        self.stats.c["checked_elements"] += sum(int(np.size(v)) for v in got.values())
        center = reference_step(state, grad, hyper, attrs)
        verdict = check_step(got, state, grad, hyper, attrs, dt, center)
        if not verdict.ok:  # name the variable of the first bad element
            offsets = np.cumsum([0] + [int(np.prod(sh)) for sh in shapes])
            for ex in verdict.detail["examples"]:
                k = int(np.searchsorted(offsets, ex["index"][0], side="right")) - 1
                ex["variable"] = f"vars[{k}]"
                ex["index"] = [int(ex["index"][0] - offsets[k])]
        self.record_verdict(spec, verdict)


# ---- the optimizer ---------------------------------------------------------------------------

class OptimizerRunner(Runner):
    def run(self, spec):
        st = self.stats
        c = spec["ctor"]
        bad = optimizer_ctor_problems(c)
        st.problem_kinds.update(f"ctor:{b}" for b in bad)
        cls = tfx_keras.RMSpropX if spec.get("keras") else tf_rmsprop_ops.RMSpropX
        st.c["keras_cases" if spec.get("keras") else "module_cases"] += 1
        try:
            opt = cls(**c)
        except ValueError as e:
            st.c["rejected"] += 1
            if not bad:
                st.violation("unexpected_rejection", spec, error="ValueError", message=str(e)[:400])
            elif not any(b in str(e) for b in bad):
                st.violation("message_missing_name", spec, message=str(e)[:400], expected=bad)
            return
        except Exception as e:  # noqa: BLE001 - any other error type breaks the contract
            st.violation("wrong_error_type", spec, error=type(e).__name__, message=str(e)[:400],
                         expected=bad)
            return
        if bad:
            st.violation("accepted_invalid", spec, problems=[f"{b}={c[b]!r}" for b in bad])
            return
        self.trajectory(spec, opt)

    def trajectory(self, spec, opt):
        st = self.stats
        c = spec["ctor"]
        rng = np.random.default_rng(spec["seed"])
        use_momentum = c["momentum"] > 0 or c["nesterov"]
        attrs = dict(centered=c["centered"], use_momentum=use_momentum, nesterov=c["nesterov"],
                     epsilon_placement=c["epsilon_placement"], lr_placement=c["lr_placement"],
                     weight_decay_mode=c["weight_decay_mode"] if c["weight_decay"] else "none")
        variables, dts, states = [], [], []
        for k, vs in enumerate(spec["variables"]):
            dt = DTYPES[vs["dtype"]]
            init = dt.array(rng.uniform(-2, 2, vs["shape"]))
            variables.append(keras.Variable(init, dtype=dt.tf.name, name=f"v{k}")
                             if spec.get("keras") else tf.Variable(init, name=f"v{k}"))
            dts.append(dt)
            states.append({"var": init, "ms": dt.array(np.full(vs["shape"], c["initial_scale"])),
                           "mom": dt.array(np.zeros(vs["shape"])) if use_momentum else None,
                           "mg": dt.array(np.zeros(vs["shape"])) if c["centered"] else None})
        lr32 = float(np.float32(c["learning_rate"]))
        # The slots start at initial_scale (ms) and 0, as the variable's dtype holds them.
        if outcome_of(lambda: opt.build(variables)) is None:
            for k, v in enumerate(variables):
                for nm in ("ms", "mom", "mg"):
                    if states[k][nm] is None:
                        continue
                    actual = opt.get_slot(v, nm).numpy()
                    if actual.tobytes() != states[k][nm].tobytes():
                        st.violation("slot_initial_value", spec, variable=f"v{k}/{nm}",
                                     dtype=dts[k].name, expected=_preview(states[k][nm]),
                                     actual=_preview(actual))
                        states[k][nm] = actual  # go on from what the optimizer holds
        fault = spec.get("fault")
        for step in range(1, spec["steps"] + 1):
            fk = fault["kind"] if fault and fault["step"] == step else None
            fvar = fault["var"] if fk else -1
            if fk == "oob" and not spec["variables"][fvar]["sparse"]:
                sparse_ids = [k for k, vs in enumerate(spec["variables"]) if vs["sparse"]]
                fk, fvar = ("oob", sparse_ids[0]) if sparse_ids else ("grad_shape", fvar)
            if fk:
                st.problem_kinds[f"step:{fk}"] += 1
            if fk == "setter":
                self.bad_setter(spec, opt, fault["setter"], fault["value"])
            problems = []
            grads, grad_args = [], []
            for k, vs in enumerate(spec["variables"]):
                dt, shape = dts[k], tuple(vs["shape"])
                mine = fk if k == fvar else None
                scale = {"normal": 1.0, "scaled": 10.0 ** rng.uniform(-4, 4), "zeros": 0.0}[spec["grad"]]
                if vs["sparse"]:
                    m = int(rng.integers(0, 2 * shape[0] + 1))
                    idx = rng.integers(0, shape[0], m)
                    if mine == "oob":
                        bad = -1 if fault["below"] else shape[0]
                        idx = np.insert(idx, int(rng.integers(0, m + 1)), bad)
                        m += 1
                        # A step of several variables is checked whole first; one variable
                        # goes straight to the op, whose check names the index.
                        problems.append(Problem("oob", ["outside [0, rows)", "is not in [0, "]))
                    vals = dt.array(rng.uniform(-1, 1, (m,) + shape[1:]) * scale)
                else:
                    idx = None
                    vals = dt.array(rng.uniform(-1, 1, shape) * scale)
                if mine == "grad_nonfinite" and vals.size:
                    vals.reshape(-1)[int(rng.integers(0, vals.size))] = {
                        "nan": math.nan, "inf": math.inf, "-inf": -math.inf}[fault["special"]]
                grads.append((vals, idx))
                values_dt = dt
                if mine == "grad_dtype":
                    values_dt = DTYPES[fault["dtype"]]  # drawn different from dt
                    passed_vals = values_dt.array(np.asarray(vals, np.float64))
                    if spec.get("keras"):  # Keras casts the gradient to the variable's dtype
                        grads[-1] = (dt.array(np.asarray(passed_vals, np.float64)), idx)
                    else:
                        problems.append(Problem("grad_dtype", [f"variable v{k}"]))
                else:
                    passed_vals = vals
                if mine == "grad_shape":
                    wrong = tuple(shape) + (2,)
                    grad_args.append(tf.constant(dt.array(rng.uniform(-1, 1, wrong)), dt.tf))
                    problems.append(Problem("grad_shape", [f"v{k}"]))
                elif idx is not None:
                    grad_args.append(tf.IndexedSlices(tf.constant(passed_vals, values_dt.tf),
                                                      tf.constant(idx),
                                                      tf.constant(shape, tf.int64)))
                else:
                    grad_args.append(tf.constant(passed_vals, values_dt.tf))
            before = [dict(s) for s in states]
            # What each op receives, as the variable's dtype holds it (lr: the optimizer's
            # float32 variable, cast); bias correction folds c = 1 - rho**t into them.
            hypers, herrs = [], []
            for k, dt in enumerate(dts):
                h = dict(lr=float(dt.round(flushed_cast(lr32, dt))), rho=float(dt.round(c["rho"])),
                         momentum=float(dt.round(c["momentum"])), epsilon=float(dt.round(c["epsilon"])),
                         weight_decay=float(dt.round(c["weight_decay"] or 0.0)))
                herr = {name: 2 * float(dt.ulp(v)) for name, v in h.items()}
                if c["bias_correction"]:
                    # _apply.fold_bias_correction, in float32 as the optimizer computes it:
                    # c = 1 - rho**t, lr*sqrt(c), eps*c (inside) or eps*sqrt(c), wd/sqrt(c).
                    # The reference uses c from rho as T holds it: the difference of the two
                    # c (and float32's rounding of c's cancellation) goes into the bound.
                    f32 = np.float32
                    c32 = f32(1) - f32(c["rho"]) ** f32(step)
                    root = np.sqrt(c32)
                    c_ref = 1.0 - h["rho"] ** step
                    dc = (abs(c_ref - float(c32)) + 4 * 2.0 ** -24) / max(c_ref, 1e-300)
                    wd = c["weight_decay"] or 0.0
                    folded = dict(
                        lr=(f32(lr32) * root, 0.5 * dc),
                        epsilon=(f32(f32(c["epsilon"]) * (c32 if c["epsilon_placement"] == "inside_sqrt"
                                                          else root)),
                                 dc if c["epsilon_placement"] == "inside_sqrt" else 0.5 * dc))
                    if attrs["weight_decay_mode"] == "decoupled":
                        folded["weight_decay"] = (f32(wd) / root, 0.5 * dc)
                    for name, (v, rel) in folded.items():
                        r = float(dt.round(flushed_cast(float(v), dt)))
                        h[name] = r
                        herr[name] = 2 * float(dt.ulp(r)) + (rel + 2.0 ** -22) * abs(r)
                hypers.append(h)
                herrs.append(herr)
                for name in HYPER_NAMES:
                    if not math.isfinite(h[name]):
                        problems.append(Problem(f"hyper:{name}", [f"{name} must"]))
            tracked = []
            for k, v in enumerate(variables):
                tracked.append(Tracked(v, before[k]["var"], label=f"v{k}"))
                for nm in ("ms", "mom", "mg"):
                    if before[k][nm] is not None and opt.built:
                        tracked.append(Tracked(opt.get_slot(v, nm), before[k][nm], label=f"v{k}/{nm}"))
            iterations = int(opt.iterations.numpy())
            exc = outcome_of(lambda: opt.apply_gradients(zip(grad_args, variables)))
            st.c["apply_calls"] += 1
            if exc is not None:
                self.judge_rejection(spec, exc, problems, tracked)
                if int(opt.iterations.numpy()) != iterations:
                    st.violation("state_changed", spec, variable="iterations")
                return
            if not self.accepted(spec, problems):
                return
            verdict = Verdict()
            for k, v in enumerate(variables):
                got = {"var": v.numpy()}
                for nm in ("ms", "mom", "mg"):
                    if before[k][nm] is not None:
                        got[nm] = opt.get_slot(v, nm).numpy()
                g, idx = grads[k]
                what = f"step {step} v{k} "
                st.c["checked_elements"] += sum(int(np.size(x)) for x in got.values())
                bias_step = step if c["bias_correction"] else None
                if idx is None:
                    h = dict(hypers[k])
                    center = reference_step(before[k], g, self._unfolded(h, c, dts[k], lr32, attrs),
                                            attrs, bias_step)
                    check_step(got, before[k], g, h, attrs, dts[k], center, hyper_err=herrs[k],
                               verdict=verdict, what=what)
                else:
                    check_sparse_opt(got, before[k], g, idx, hypers[k], herrs[k], attrs, dts[k],
                                     self._unfolded(hypers[k], c, dts[k], lr32, attrs), bias_step,
                                     verdict, what)
                if not verdict.ok:
                    break
                states[k] = {nm: got.get(nm) for nm in ("var", "ms", "mom", "mg")}
            self.record_verdict(spec, verdict)
            if not verdict.ok:
                return

    def bad_setter(self, spec, opt, name, value):
        """A setter given an invalid value: ValueError naming it, the value unchanged."""
        st = self.stats

        def current():
            v = getattr(opt, name)
            return None if v is None else np.asarray(v, np.float64).tobytes()

        was = current()
        try:
            setattr(opt, name, value)
        except ValueError as e:
            st.c["rejected"] += 1
            if name not in str(e):
                st.violation("message_missing_name", spec, message=str(e)[:400], expected=[name])
        except Exception as e:  # noqa: BLE001 - any other error type breaks the contract
            st.violation("wrong_error_type", spec, error=type(e).__name__, message=str(e)[:400],
                         expected=[name])
        else:
            st.violation("accepted_invalid", spec, problems=[f"setter {name}={value!r}"])
        if current() != was:
            st.violation("state_changed", spec, variable=f"optimizer.{name}")

    @staticmethod
    def _unfolded(h, c, dt, lr32, attrs):
        """The hyperparameters for the reference (which applies bias correction itself).
        With bias correction the op receives the folded values (lr*sqrt(c), ...) rounded to
        T, not lr itself: the reference starts from the float32 values the optimizer folds
        (lr=1e5 is inf as a half, lr*sqrt(c) need not be)."""
        if not c["bias_correction"]:
            return dict(h)
        rnd = np.float32 if dt.compute != dt.np else dt.round  # 16-bit: the float32 values
        unfolded = dict(lr=float(rnd(lr32)), epsilon=float(rnd(c["epsilon"])),
                        weight_decay=float(rnd(c["weight_decay"] or 0.0)))
        # A folded value the cast flushed to 0 (see flushed_cast) is 0 for the reference too.
        return dict(h, **{n: 0.0 if h[n] == 0 else v for n, v in unfolded.items()})


RUNNERS = {"dense": DenseRunner, "sparse": SparseRunner, "multi": MultiRunner,
           "optimizer": OptimizerRunner}
