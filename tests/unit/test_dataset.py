"""load_dataset_dir: FTSAD-shaped folders and every way they can be wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dragon.detector.train import DatasetError, load_dataset_dir

pytestmark = pytest.mark.unit


def write(folder: Path, **arrays: np.ndarray) -> Path:
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array)
    return folder


def test_train_only_folder(tmp_path: Path) -> None:
    train, test, labels = load_dataset_dir(write(tmp_path, train=np.ones((10, 3), dtype=np.float32)))
    assert train.shape == (10, 3) and train.dtype == np.float64
    assert test is None and labels is None


@pytest.mark.parametrize("labels", [np.zeros((6, 3)), np.r_[np.zeros(5), 1.0]])
def test_full_folder_with_per_dimension_or_per_step_labels(tmp_path: Path, labels: np.ndarray) -> None:
    folder = write(tmp_path, train=np.ones((10, 3)), test=np.ones((6, 3)), labels=labels)
    train, test, loaded = load_dataset_dir(folder)
    assert test is not None and test.shape == (6, 3)
    assert loaded is not None and loaded.shape == labels.shape and loaded.dtype == np.int8


GOOD_TRAIN = np.ones((10, 3))
GOOD_TEST = np.ones((6, 3))


@pytest.mark.parametrize(
    ("arrays", "file", "message"),
    [
        ({}, "train.npy", "missing"),
        ({"train": np.ones(10)}, "train.npy", "2 dimensions"),
        ({"train": np.ones((0, 3))}, "train.npy", "empty"),
        ({"train": np.array([[1.0, np.nan]])}, "train.npy", "NaN"),
        ({"train": np.array([["a", "b"]])}, "train.npy", "not numeric"),
        ({"train": np.array([[object()]], dtype=object)}, "train.npy", "cannot be read"),
        ({"train": GOOD_TRAIN, "test": np.ones((6, 2))}, "test.npy", "dimensions"),
        ({"train": GOOD_TRAIN, "test": np.array([[np.inf, 0.0, 0.0]])}, "test.npy", "infinite"),
        ({"train": GOOD_TRAIN, "labels": np.zeros(6)}, "labels.npy", "without test"),
        ({"train": GOOD_TRAIN, "test": GOOD_TEST, "labels": np.zeros(5)}, "labels.npy", "expected"),
        ({"train": GOOD_TRAIN, "test": GOOD_TEST, "labels": np.zeros((6, 2))}, "labels.npy", "dimensions"),
        ({"train": GOOD_TRAIN, "test": GOOD_TEST, "labels": np.full(6, 2.0)}, "labels.npy", "0 or 1"),
    ],
)
def test_malformed_folders_raise_dataset_error_naming_the_file(
    tmp_path: Path, arrays: dict, file: str, message: str
) -> None:
    for name, array in arrays.items():
        np.save(tmp_path / f"{name}.npy", array, allow_pickle=True)
    with pytest.raises(DatasetError, match=message) as error:
        load_dataset_dir(tmp_path)
    assert file in str(error.value)


def test_garbage_file_and_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "train.npy").write_bytes(b"definitely not numpy")
    with pytest.raises(DatasetError, match="train.npy"):
        load_dataset_dir(tmp_path)
    with pytest.raises(DatasetError, match="not a directory"):
        load_dataset_dir(tmp_path / "nowhere")
    assert issubclass(DatasetError, ValueError)
