"""Runs RMSpropX on a 2-device DTensor CPU mesh and on plain variables with the same
gradients; prints one JSON line of results. Run by test_dtensor.py in its own process
(logical devices must be configured before TensorFlow starts)."""
import json
import sys

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from tensorflow.experimental import dtensor  # noqa: E402

from tf_rmsprop_ops import RMSpropX  # noqa: E402


def on_layout(value, layout):
    replicated = dtensor.Layout.replicated(layout.mesh, rank=layout.rank)
    return dtensor.relayout(dtensor.copy_to_mesh(tf.constant(value), replicated), layout)


def main(seed):
    rng = np.random.default_rng(seed)
    mesh = dtensor.create_mesh([("x", 2)], device_type="CPU")
    layouts = {"replicated": dtensor.Layout.replicated(mesh, rank=2),
               "row_sharded": dtensor.Layout(["x", dtensor.UNSHARDED], mesh)}
    kwargs = dict(learning_rate=0.05, momentum=0.9, centered=True, weight_decay=0.01)
    out = {}
    for name, layout in layouts.items():
        init = rng.normal(size=(8, 4)).astype(np.float32)
        grads = [rng.normal(size=(8, 4)).astype(np.float32) for _ in range(3)]
        sparse = [(rng.integers(0, 8, 6), rng.normal(size=(6, 4)).astype(np.float32))
                  for _ in range(3)]
        dvar = dtensor.DVariable(on_layout(init, layout))
        dtable = dtensor.DVariable(on_layout(init, layout))
        var, table = tf.Variable(init), tf.Variable(init)
        dopt, opt = RMSpropX(mesh=mesh, **kwargs), RMSpropX(**kwargs)

        def dense_step(g):
            dopt.apply_gradients([(g, dvar)])

        if name == "replicated":
            dense_step = tf.function(dense_step)  # replicated layouts also run in graphs
        for g, (idx, rows) in zip(grads, sparse):
            dense_step(on_layout(g, layout))
            opt.apply_gradients([(tf.constant(g), var)])
            dopt.apply_gradients([(tf.IndexedSlices(tf.constant(rows), tf.constant(idx),
                                                    tf.constant([8, 4])), dtable)])
            opt.apply_gradients([(tf.IndexedSlices(tf.constant(rows), tf.constant(idx),
                                                   tf.constant([8, 4])), table)])
        def full(dv):  # the global value of a (possibly sharded) DVariable
            return dtensor.relayout(dv.read_value(), layouts["replicated"]).numpy()

        out[name] = dict(
            dense_err=float(np.max(np.abs(full(dvar) - var.numpy()))),
            sparse_err=float(np.max(np.abs(full(dtable) - table.numpy()))),
            moved=float(np.max(np.abs(full(dvar) - init))),
            var_layout_kept=dtensor.fetch_layout(dvar) == layout,
            slot_layouts_match=all(dtensor.fetch_layout(dopt.get_slot(dvar, s)) == layout
                                   for s in dopt.slot_names),
            iterations=int(dopt.iterations.numpy()),
        )
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main(int(sys.argv[1]))
