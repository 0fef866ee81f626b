"""Data shipped with the package: the digits data set and the trained int8 networks.

``digits.npz`` is scikit-learn's copy of the UCI "Optical Recognition of
Handwritten Digits" test set (1797 grey 8x8 images, values 0..16, and their
labels), written by ``scripts/train_digits.py --write-data``; it ships here
so that the tests and ``psc demo`` need neither scikit-learn nor a download.
The ``digits_*.onnx`` networks and ``digits_results.json`` are written by
``scripts/train_digits.py``.
"""

from importlib import resources

import numpy as np

from psc.model.checks import check_int, show

__all__ = ["FOLDS", "path", "digits", "digits_split", "NETWORKS"]

#: Folds of the fixed split: fold ``k`` tests on one fifth of the images and trains on the rest.
FOLDS = 5
#: The shipped int8 networks (``digits_<name>.onnx``).
NETWORKS = ("relu", "psc")
_SPLIT_SEED = 20211


def path(name):
    """Path of the shipped file ``name``."""
    if not isinstance(name, str) or "/" in name:
        raise ValueError(f"name must be a file name of psc.data, not {show(name)}")
    p = resources.files(__name__) / name
    if not p.is_file():
        raise FileNotFoundError(f"psc.data has no file {name!r}")
    return p


def digits():
    """All the digits: real-valued images ``(1797, 1, 8, 8)`` in ``[-1, 1]`` (``(v - 8) / 8``,
    so that both signs of a symmetric int8 input are used) and int64 labels ``(1797,)``."""
    with np.load(path("digits.npz")) as f:
        images, labels = f["images"], f["labels"]
    return (images.astype(np.float64)[:, None] - 8.0) / 8.0, labels.astype(np.int64)


def digits_split(fold=0):
    """``(x_train, y_train, x_test, y_test)`` of fold ``fold`` (0..4) of a fixed, seeded
    five-fold split; fold 0 is the split of the shipped networks."""
    fold = check_int("fold", fold, 0, FOLDS - 1)
    x, y = digits()
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(y))
    test = np.zeros(len(y), dtype=bool)
    test[np.array_split(order, FOLDS)[fold]] = True
    return x[~test], y[~test], x[test], y[test]
