from tf_rmsprop_ops.cli import main

main()
