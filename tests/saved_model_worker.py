"""Loads the SavedModels written by test_saved_model.py in a NEW process.

Modes (argv[1]): `continue PATH DATA OUT` imports tf_rmsprop_ops, loads the training export,
serves, trains on the steps in DATA and writes the results to OUT (.npz); `serve PATH DATA
OUT` never imports the package and serves a serving-only export; `no_package PATH` loads a
training export without the package and prints the error.
"""
import sys

import numpy as np
import tensorflow as tf


def main(mode, path, data=None, out=None):
    if mode == "continue":
        import tf_rmsprop_ops  # noqa: F401  (registers ApplyRMSpropX / SparseApplyRMSpropX)
    if mode == "no_package":
        try:
            tf.saved_model.load(path)
        except Exception as e:  # noqa: BLE001 - the message is what the test checks
            print("ERROR " + type(e).__name__ + ": " + str(e).replace("\n", " ")[:2000])
            return
        print("LOADED")
        return
    assert "tf_rmsprop_ops" not in sys.modules or mode == "continue"
    loaded = tf.saved_model.load(path)
    d = np.load(data)
    result = {"served": loaded.serve(tf.constant(d["serve_x"]), tf.constant(d["serve_ids"])).numpy()}
    if mode == "continue":
        losses = [loaded.train_step(tf.constant(x), tf.constant(i), tf.constant(y)).numpy()
                  for x, i, y in zip(d["xs"], d["ids"], d["ys"])]
        result["losses"] = np.array(losses)
        result["iterations"] = np.array(loaded.optimizer._iterations.numpy())
        for k, v in enumerate(loaded.optimizer_state()):
            result[f"state{k}"] = v.numpy()
        for k, v in enumerate(loaded.model_variables()):
            result[f"model{k}"] = v.numpy()
    result["package_imported"] = np.array("tf_rmsprop_ops" in sys.modules)
    np.savez(out, **result)
    print("DONE")


if __name__ == "__main__":
    main(*sys.argv[1:])
