"""`bench --models`: an optimizer step over the variable sets of real models (RMSprop,
momentum 0.9, float32, the step in a tf.function), all competitors round-robin in one
process with the roofline probe for the same total bytes:

* mlp: 40 x ([256, 256] kernel + [256] bias): 80 small tensors, 2.6M parameters;
* resnet50: the trainable variables of keras.applications.ResNet50(weights=None) (built
  locally, nothing downloaded): 214 tensors, 25.6M parameters;
* bert_base: BERT-base's shapes (computed): 199 tensors, 109.5M parameters;
* single: one [4M] tensor (the multi-tensor op must not be slower on one tensor).

The call floor: the same RMSpropX step over as many variables of 256 elements each (the
same inputs: handles, slots and captured gradients, next to no bytes), timed in the same
round-robin. It is what TensorFlow's function call and the op's per-input work cost a step
of this many variables, whatever the update; the table reports each step above it too.
TensorFlow's share of it (`tf_call`): a tf.function that takes the rmspropx step's own
variables, slots and gradients and passes them through one IdentityN, no update. From it
and the roofline the table derives what issue 16's targets would need of the update
(`runner.models_target_line`).

Competitors: `rmspropx` (RMSpropX's defaults: one ApplyRMSpropXMulti per step over flat
state, one buffer per slot kind), `rmspropx_per_slot` (flat_state=False: one slot variable
per variable and kind, twice the call's inputs; its own floor, `floor_per_slot_ms`),
`rmspropx_per_var` (multi_tensor=False: one ApplyRMSpropX per variable, per-slot state),
`rmspropx_jit` (jit_compile=True: the update as the optimizer's own XLA function, the ops'
lowerings, the learning rate a run-time value; per-slot state, its default), `rmspropx_8bit` (state_bits=8: 8-bit state
for every variable of at least 4096 elements, one ApplyRMSpropXMulti per state format),
`tf_raw` (ResourceApplyRMSProp per variable), `keras` / `keras_jit` (Keras 3 RMSprop, jit
off / on). The floor of the competitors with per-slot state (all but `rmspropx`) is
`floor_per_slot_ms`.
"""
import numpy as np

from tf_rmsprop_ops.benchmark import roofline
from tf_rmsprop_ops.benchmark.dense import arrays_moved
from tf_rmsprop_ops.benchmark.shapes import MODELS, shapes_of  # noqa: F401
from tf_rmsprop_ops.benchmark.timing import median_ms

def run(model, repeats, threads, rng):
    import keras
    import tensorflow as tf

    from tf_rmsprop_ops import RMSpropX, _flat_state
    shapes = shapes_of(model)
    params = int(sum(np.prod(s) for s in shapes))
    grads = [tf.constant(rng.standard_normal(s, dtype=np.float32)) for s in shapes]

    def fresh():
        return [tf.Variable(tf.random.uniform(s, 0.1, 1.0)) for s in shapes]

    functions = {}
    built = {}
    for name, kwargs in (("rmspropx", {}), ("rmspropx_per_slot", dict(flat_state=False)),
                         ("rmspropx_per_var", dict(multi_tensor=False)),
                         ("rmspropx_jit", dict(jit_compile=True)),
                         ("rmspropx_8bit", dict(state_bits=8))):
        variables = fresh()
        opt = RMSpropX(learning_rate=1e-3, momentum=0.9, **kwargs)
        opt.build(variables)
        built[name] = (opt, variables)

        # A closure, not `def step(opt=opt, variables=variables)`: a tf.function's default
        # arguments are inputs, bound and checked on every call (1.5-2 ms for the MLP's 80
        # variables here), a cost neither the floor nor Keras' steps pay and no training
        # step has (BENCHMARKS.md, profiling log).
        def make(opt=opt, variables=variables):
            def step():
                opt.apply_gradients(zip(grads, variables))
            return tf.function(step)
        functions[name] = make()

    raw = [(v, tf.Variable(tf.zeros_like(v)), tf.Variable(tf.zeros_like(v))) for v in fresh()]
    scalar = lambda x: tf.constant(x, tf.float32)  # noqa: E731

    @tf.function
    def tf_raw():
        for (var, ms, mom), g in zip(raw, grads):
            tf.raw_ops.ResourceApplyRMSProp(var=var.handle, ms=ms.handle, mom=mom.handle,
                                            lr=scalar(1e-3), rho=scalar(0.9),
                                            momentum=scalar(0.9), epsilon=scalar(1e-7), grad=g)
    functions["tf_raw"] = tf_raw

    for name, jit in (("keras", False), ("keras_jit", True)):
        variables = fresh()
        opt = keras.optimizers.RMSprop(learning_rate=1e-3, momentum=0.9)
        opt.build(variables)

        def make(opt=opt, variables=variables, jit=jit):
            @tf.function(jit_compile=jit)
            def step():
                opt.apply_gradients(zip(grads, variables))
            return step
        functions[name] = make()

    # 256 elements: above the size TensorFlow inlines a captured tensor as a constant, so the
    # floor's gradients are captured inputs as the real ones are.
    floor_vars = [tf.Variable(tf.random.uniform([256], 0.1, 1.0)) for _ in shapes]
    floor_grads = [tf.constant(rng.standard_normal(256, dtype=np.float32)) for _ in shapes]
    floor_opt = RMSpropX(learning_rate=1e-3, momentum=0.9)
    floor_opt.build(floor_vars)
    per_slot_floor_vars = [tf.Variable(v) for v in floor_vars]
    per_slot_floor_opt = RMSpropX(learning_rate=1e-3, momentum=0.9, flat_state=False)
    per_slot_floor_opt.build(per_slot_floor_vars)

    @tf.function
    def floor():  # one input per variable, gradient and flat buffer
        floor_opt.apply_gradients(zip(floor_grads, floor_vars))

    @tf.function
    def floor_per_slot():  # one input per variable, gradient and slot
        per_slot_floor_opt.apply_gradients(zip(floor_grads, per_slot_floor_vars))

    # TensorFlow's own share of the floor: a function that takes the rmspropx step's inputs
    # (the same variables, state buffers and gradients, captured the same way) and passes
    # them through one IdentityN: every per-input cost of the call, none of the update.
    opt, variables = built["rmspropx"]
    inputs = [v.handle for v in variables]
    storage = {}
    for v in variables:
        for s in opt.slot_names:
            slot = opt.slot_state(v, s)
            held = slot.buffer if _flat_state.is_flat(slot) else slot
            storage[id(held)] = held.handle
    inputs += list(storage.values())

    @tf.function
    def tf_call():
        with tf.control_dependencies(tf.raw_ops.IdentityN(input=inputs + grads)):
            return tf.constant(0)

    reads, writes = arrays_moved("momentum")
    probe = roofline.make_probe(params * 4, reads, writes, threads)
    times = median_ms({**functions, "floor": floor, "floor_per_slot": floor_per_slot,
                       "tf_call": tf_call, "roofline": probe}, repeats)
    roof = times.pop("roofline")
    floor_ms = times.pop("floor")
    floor_per_slot_ms = times.pop("floor_per_slot")
    tf_call_ms = times.pop("tf_call")
    return dict(kind="models", model=model, tensors=len(shapes), params=params,
                threads=threads, ms=times, roofline_ms=roof, floor_ms=floor_ms,
                floor_per_slot_ms=floor_per_slot_ms,
                tf_call_ms=tf_call_ms, tf_call_inputs=len(inputs) + len(grads))
