"""`tf-rmsprop-ops bench`: our ops against TensorFlow's kernels, Keras 3 and the roofline.

Every case runs in a process of its own (`python -m tf_rmsprop_ops.benchmark.case`), so
one case's allocations and thread pools do not colour the next.
"""
