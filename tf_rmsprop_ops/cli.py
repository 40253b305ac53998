"""Command line: `tf-rmsprop-ops demo` and `tf-rmsprop-ops bench` (also `python -m tf_rmsprop_ops`)."""
import argparse
import contextlib
import os


def _parser():
    parser = argparse.ArgumentParser(prog="tf-rmsprop-ops", description=__doc__)
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's C++ log lines (hidden by default)")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train a small model with RMSpropX, print the loss")
    demo.add_argument("--steps", type=int, default=300)
    demo.add_argument("--jit", action="store_true", help="jit_compile=True (the XLA lowering)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--strategy", default="none",
                      choices=["none", "mirrored", "multiworker", "ps", "dtensor"],
                      help="train under a tf.distribute strategy or a DTensor mesh (README)")

    bench = sub.add_parser("bench", help="time the ops against TensorFlow, Keras, the roofline")
    bench.add_argument("--sizes", default=None,
                       help="dense element counts (K/M/G); default 1M,16M,64M (--quick: 4K,64K)")
    bench.add_argument("--variants", default="plain,momentum,centered_momentum",
                       help="from plain, momentum, centered, centered_momentum")
    bench.add_argument("--dtype", default="float32",
                       help="comma list from float32, float16, bfloat16, float64")
    bench.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                       help="intra-op threads (and probe threads)")
    bench.add_argument("--repeats", type=int, default=15, help="timed calls per implementation (sparse: at least 64, eight passes over its batches)")
    bench.add_argument("--sparse-rows", default="1000000")
    bench.add_argument("--sparse-dim", type=int, default=64)
    bench.add_argument("--sparse-indices", type=int, default=10000)
    bench.add_argument("--no-sparse", action="store_true")
    bench.add_argument("--only-sparse", action="store_true")
    bench.add_argument("--json", default="bench_out/bench.json", help="where to write results")
    bench.add_argument("--plot", default=None, help="PNG chart path (needs matplotlib)")
    bench.add_argument("--xla-multi-output-fusion", action="store_true",
                       help="run every case with XLA:CPU's multi-output fusion on (XLA_FLAGS), "
                            "which makes the XLA update one loop (README: XLA)")
    bench.add_argument("--models", nargs="?", const="all", default=None,
                       help="only optimizer steps over real models' variable sets (mlp, "
                            "resnet50, bert_base, single; default all): one multi-tensor "
                            "call vs one op per variable, TF, Keras, the roofline")
    bench.add_argument("--keras-fit", action="store_true",
                       help="only whole model.fit steps: our Keras optimizer vs Keras 3 "
                            "RMSprop (jit off/on) on an embedding model, an MLP and "
                            "ResNet-50 at batch 4, and each optimizer's share of the step "
                            "(the step minus plain SGD's)")
    bench.add_argument("--dtensor", action="store_true",
                       help="only the DTensor case: a row-sharded variable on a 2-device CPU "
                            "mesh, eager per-shard op vs the in-graph path (sizes: --sizes)")
    bench.add_argument("--denormals", action="store_true",
                       help="only the denormal case: the dense op with normal vs subnormal "
                            "inputs, eager and in a tf.function (sizes: --sizes)")
    bench.add_argument("--state8", action="store_true",
                       help="only the 8-bit optimizer state case: the dense and sparse op with "
                            "momentum, 8-bit vs float32 state (sizes: --sizes)")
    bench.add_argument("--quick", action="store_true",
                       help="tiny sizes and few repeats: checks the harness, not the speed")
    return parser


@contextlib.contextmanager
def _quiet_stderr(enabled):
    """Hides what C++ writes to stderr while TensorFlow starts (absl's pre-init notices and
    oneDNN's banner ignore TF_CPP_MIN_LOG_LEVEL). Python exceptions still propagate."""
    if not enabled:
        yield
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _start_tensorflow(verbose):
    with _quiet_stderr(not verbose):
        import tensorflow  # noqa: F401
        import tf_rmsprop_ops._library  # noqa: F401  (loads the op library)


def main(argv=None):
    args = _parser().parse_args(argv)
    # Before TensorFlow is imported (it reads this once); inherited by bench's case processes.
    if args.verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    _start_tensorflow(args.verbose)
    if args.command == "demo":
        from tf_rmsprop_ops import demo
        demo.main(steps=args.steps, jit_compile=args.jit, seed=args.seed,
                  strategy=args.strategy)
    elif args.command == "bench":
        if args.quick:
            args.sizes, args.repeats = args.sizes or "4K,64K", 3
            args.sparse_rows, args.sparse_indices, args.sparse_dim = "2000", 300, 8
        args.sizes = args.sizes or "1M,16M,64M"
        if args.json and os.path.dirname(args.json):
            os.makedirs(os.path.dirname(args.json), exist_ok=True)
        from tf_rmsprop_ops.benchmark import runner
        runner.main(args)


if __name__ == "__main__":
    main()
