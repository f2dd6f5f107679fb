"""Data: what a run reads (`config`), a reader per source (`fashion_mnist`, `cifar`,
`image_folders`, `synthetic`; in-memory sets are `arrays`), the train / val / test splits
(`splits`) and deterministic batch orders (`batches`). The names a user of the API reaches are
re-exported here (`oqat.data.eval_batches(...)`)."""
from .batches import calib_batches, eval_batches, train_batches
from .config import DataConfig, DataError
from .splits import Splits, load_splits

__all__ = ["DataConfig", "DataError", "Splits", "load_splits", "train_batches", "eval_batches", "calib_batches"]
