"""Runs one benchmark case in this process and prints its result as one JSON line.

python -m tf_rmsprop_ops.benchmark.case '{"kind": "dense", "n": 1048576, ...}'
"""
import json
import sys


def main(spec):
    import numpy as np
    import tensorflow as tf

    threads = spec["threads"]
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    if spec["kind"] == "dtensor":  # a 2-device mesh: logical devices before TF starts them
        tf.config.set_logical_device_configuration(
            tf.config.list_physical_devices("CPU")[0],
            [tf.config.LogicalDeviceConfiguration()] * 2)
    rng = np.random.default_rng(spec.get("seed", 0))
    if spec["kind"] == "dense":
        from tf_rmsprop_ops.benchmark import dense
        result = dense.run(spec["n"], spec["variant"], spec["dtype"], threads, spec["repeats"],
                           rng)
    elif spec["kind"] == "models":
        from tf_rmsprop_ops.benchmark import models
        result = models.run(spec["model"], spec["repeats"], threads, rng)
    elif spec["kind"] == "keras_fit":
        from tf_rmsprop_ops.benchmark import keras_fit
        result = keras_fit.run(spec["model"], spec["quick"], spec["repeats"], rng)
    elif spec["kind"] == "dtensor":
        from tf_rmsprop_ops.benchmark import dtensor
        result = dtensor.run(spec["n"], threads, spec["repeats"], rng)
    elif spec["kind"] == "state8":
        from tf_rmsprop_ops.benchmark import state8
        result = state8.run(spec["n"], threads, spec["repeats"], rng)
    elif spec["kind"] == "denormals":
        from tf_rmsprop_ops.benchmark import denormals
        result = denormals.run(spec["n"], threads, spec["repeats"], rng)
    else:
        from tf_rmsprop_ops.benchmark import sparse
        result = sparse.run(spec["rows"], spec["dim"], spec["indices"], threads,
                            spec["repeats"], rng)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
