"""Subset files: which images of a train split a run trains on (make_longtail.py writes them), and the
dataset view that renumbers those images from 0 so that they address a memory bank of their own."""
import json
import os

import numpy as np
import torch

from lib import jsonl
from lib.data import DatasetError


class SubsetDataset(torch.utils.data.Dataset):
    """The images `indices` of `dataset`, renumbered: items are (img, target, position), where
    position 0..len-1 addresses the memory bank. Setting .transform sets the wrapped dataset's."""

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)     # [n] into dataset
        self.targets = np.asarray(dataset.targets)[self.indices]  # [n]
        self.num_classes = dataset.num_classes

    @property
    def transform(self):
        return self.dataset.transform

    @transform.setter
    def transform(self, transform):
        self.dataset.transform = transform

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, position):
        img, target, _ = self.dataset[int(self.indices[position])]
        return img, target, position


# A subset file is JSON: what made it (dataset, ratio, seed, ...), the size of the train split it
# indexes, and the kept indices with their labels; the labels let a file made for another dataset
# (CIFAR-100 for CIFAR-10: both have 50,000 training images) be caught before training on it.
SUBSET_FORMAT = "cld-subset-1"


def write_subset(path, indices, labels, train_size, **about):
    """Write a subset file atomically. indices [n] into a train split of train_size images, labels [n]."""
    record = {"format": SUBSET_FORMAT, **about, "train_size": int(train_size), "images": len(indices),
              "indices": [int(i) for i in indices], "labels": [int(y) for y in labels]}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    jsonl.write_atomic(path, json.dumps(record) + "\n")


def int_list(record, key, path):
    values = record.get(key)
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise DatasetError(f"subset file {path}: '{key}' is not a list of integers; write it again "
                           f"with make_longtail.py")
    return np.asarray(values, dtype=np.int64)


def load_subset(path):
    """The checked contents of a subset file: a dict whose indices and labels are int64 arrays [n]."""
    if not os.path.isfile(path):
        raise DatasetError(f"subset file {path} does not exist; write it with make_longtail.py --out {path}")
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"subset file {path} is not readable JSON ({type(e).__name__}); write it again "
                           f"with make_longtail.py")
    if not isinstance(record, dict) or record.get("format") != SUBSET_FORMAT:
        raise DatasetError(f"subset file {path} was not written by make_longtail.py (no format "
                           f"{SUBSET_FORMAT!r}); write it again")
    record["indices"], record["labels"] = int_list(record, "indices", path), int_list(record, "labels", path)
    size, indices = record.get("train_size"), record["indices"]
    if not isinstance(size, int) or len(record["labels"]) != len(indices) or not len(indices):
        raise DatasetError(f"subset file {path} is damaged: it needs train_size and as many labels as "
                           f"indices (at least one); write it again with make_longtail.py")
    if indices.min() < 0 or indices.max() >= size or len(np.unique(indices)) != len(indices):
        raise DatasetError(f"subset file {path} is damaged: its indices must be distinct and within "
                           f"0..{size - 1}; write it again with make_longtail.py")
    return record


def read_subset(path):
    """The indices [n] (int64) into the train split that the subset file at path keeps."""
    return load_subset(path)["indices"]


def subset_dataset(dataset, path_or_indices):
    """dataset restricted to a subset: items (img, target, position), position = 0..n-1.

    Given a subset file, it must have been made from this split: same size, same labels.
    """
    if isinstance(path_or_indices, (str, os.PathLike)):
        path = os.fspath(path_or_indices)
        record = load_subset(path)
        made_from = record.get("dataset", "another dataset")
        if record["train_size"] != len(dataset):
            raise DatasetError(f"subset file {path} indexes a train split of {record['train_size']} images "
                               f"({made_from}), this one has {len(dataset)}; make the subset from this dataset")
        indices = record["indices"]
        if not np.array_equal(np.asarray(dataset.targets)[indices], record["labels"]):
            raise DatasetError(f"subset file {path} was made from {made_from} and its labels disagree with "
                               f"this dataset's; make the subset from this dataset")
        return SubsetDataset(dataset, indices)
    indices = np.asarray(path_or_indices, dtype=np.int64)
    if indices.ndim != 1 or (len(indices) and (indices.min() < 0 or indices.max() >= len(dataset))):
        raise DatasetError(f"subset indices must be a list within 0..{len(dataset) - 1}")
    return SubsetDataset(dataset, indices)
