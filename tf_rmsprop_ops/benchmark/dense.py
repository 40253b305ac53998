"""Dense case: one update of an n-element variable, each implementation as a tf.function."""
import keras
import numpy as np
import tensorflow as tf

import tf_rmsprop_ops
from tf_rmsprop_ops.benchmark import roofline
from tf_rmsprop_ops.benchmark.timing import median_ms

# variant -> (momentum, centered)
VARIANTS = {"plain": (False, False), "momentum": (True, False), "centered": (False, True),
            "centered_momentum": (True, True)}
HYPER = dict(lr=1e-3, rho=0.9, epsilon=1e-7)
MOMENTUM = 0.9
ROOFLINE = "roofline"


def arrays_moved(variant):
    """(arrays read, arrays written in place) by one fused RMSpropX update."""
    momentum, centered = VARIANTS[variant]
    slots = 1 + momentum + centered
    return 1 + slots + 1, 1 + slots  # var + slots + grad read; var + slots written


def _variables(rng, n, dtype, count):
    return [tf.Variable(tf.cast(rng.random(n, dtype=np.float32) + 0.1, dtype))
            for _ in range(count)]


def competitors(n, variant, dtype, rng):
    """{name: zero-argument callable running one update} for this case."""
    use_momentum, centered = VARIANTS[variant]
    grad = tf.cast(tf.constant(rng.standard_normal(n, dtype=np.float32)), dtype)
    out = {}

    def ours(jit):
        var, ms, *rest = _variables(rng, n, dtype, 2 + use_momentum + centered)
        mom = rest.pop(0) if use_momentum else None
        mg = rest.pop(0) if centered else None

        @tf.function(jit_compile=jit)
        def step():
            tf_rmsprop_ops.apply_rmsprop_x(var, ms, grad, mom=mom, mg=mg,
                                           momentum=MOMENTUM if use_momentum else 0.0, **HYPER)
        return step

    out["rmspropx"] = ours(False)
    out["rmspropx_xla"] = ours(True)

    # TensorFlow's kernels always carry a momentum slot (momentum=0 turns it off in value).
    var, ms, mom, mg = _variables(rng, n, dtype, 4)
    scalar = lambda x: tf.constant(x, dtype)  # noqa: E731
    args = dict(var=var.handle, ms=ms.handle, mom=mom.handle, lr=scalar(HYPER["lr"]),
                rho=scalar(HYPER["rho"]), momentum=scalar(MOMENTUM if use_momentum else 0.0),
                epsilon=scalar(HYPER["epsilon"]), grad=grad)

    @tf.function
    def tf_raw():
        if centered:
            tf.raw_ops.ResourceApplyCenteredRMSProp(mg=mg.handle, **args)
        else:
            tf.raw_ops.ResourceApplyRMSProp(**args)
    out["tf_raw"] = tf_raw

    for name, jit in (("keras", False), ("keras_jit", True)):
        kvar = _variables(rng, n, dtype, 1)[0]
        opt = keras.optimizers.RMSprop(learning_rate=HYPER["lr"], rho=HYPER["rho"],
                                       momentum=MOMENTUM if use_momentum else 0.0,
                                       epsilon=HYPER["epsilon"], centered=centered)
        opt.build([kvar])

        def make(opt=opt, kvar=kvar, jit=jit):
            @tf.function(jit_compile=jit)
            def step():
                opt.apply_gradients([(grad, kvar)])
            return step
        out[name] = make()
    return out


def run(n, variant, dtype, threads, repeats, rng):
    dtype = tf.as_dtype(dtype)
    reads, writes = arrays_moved(variant)
    bytes_per_array = n * dtype.size
    # The bandwidth probe runs in the same round-robin as the implementations.
    probe = roofline.make_probe(bytes_per_array, reads, writes, threads)
    times = median_ms({**competitors(n, variant, dtype, rng), ROOFLINE: probe}, repeats)
    roof = times.pop(ROOFLINE)
    return dict(kind="dense", n=n, variant=variant, dtype=dtype.name, threads=threads,
                ms=times, roofline_ms=roof,
                bytes_moved=(reads + writes) * bytes_per_array,
                bandwidth_gbs=(reads + writes) * bytes_per_array / (roof * 1e-3) / 1e9)
