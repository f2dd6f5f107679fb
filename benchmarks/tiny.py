"""What `--tiny` means to the benchmarks that train or evaluate from a config: synthetic
Fashion-MNIST-sized data, a few small batches. The suite runs every benchmark so (tests/
test_benchmarks.py), so none rots; the numbers they print then say nothing."""

DATA = ["data.name=synthetic", "data.val_size=32", "data.synthetic_train=160", "data.synthetic_test=32",
        "data.batch_size=16", "data.eval_batch_size=32", "train.calib_images=16"]
