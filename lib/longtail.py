"""Long-tailed training sets: which images a long-tailed subset keeps, and accuracy by class size.

The subset is LDAM-DRW's CIFAR-LT construction (its imbalance_cifar.py), applied to any labelled split; the
many / medium / few-shot split of the classes is ImageNet-LT's (OLTR): more than 100 training
images, 20 to 100, fewer than 20.
"""
import numpy as np


def class_counts(labels, num_classes):
    """Images per class [C] of labels [N]; negative labels (unlabelled images) are not counted."""
    labels = np.asarray(labels, dtype=np.int64)
    labels = labels[labels >= 0]
    if labels.size and labels.max() >= num_classes:
        raise ValueError(f"label {labels.max()} is out of range for {num_classes} classes")
    return np.bincount(labels, minlength=num_classes)


def longtail_counts(n_max, num_classes, ratio):
    """Images kept per class [C]: class i keeps int(n_max * (1/ratio) ** (i / (C-1))), class 0 the head."""
    if ratio < 1:
        raise ValueError(f"the imbalance ratio must be at least 1, got {ratio}")
    if num_classes == 1:
        return np.array([n_max], dtype=np.int64)
    # Same float expression as LDAM-DRW's (imb_factor = 1/ratio), so int() truncates alike.
    return np.array([int(n_max * (1 / ratio) ** (i / (num_classes - 1))) for i in range(num_classes)],
                    dtype=np.int64)


def longtail_indices(labels, num_classes, ratio, seed=0, n_max=None):
    """Indices [sum of the kept counts] of the long-tailed subset of labels [N], class 0's first.

    n_max is the size of the largest class unless given (a smaller head; with ratio 1 a balanced subset
    of n_max images per class). numpy's generator is seeded once; then, class by class in label order,
    the class's indices are shuffled and the first n_i kept. This draws exactly what LDAM-DRW draws after
    np.random.seed(0), so CIFAR-10-LT and CIFAR-100-LT are their images. A class smaller than its n_i
    keeps all its images.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n_max = int(class_counts(labels, num_classes).max()) if n_max is None else n_max
    keep = longtail_counts(n_max, num_classes, ratio)
    rng = np.random.RandomState(seed)
    parts = []
    for c in range(num_classes):
        members = np.where(labels == c)[0]
        rng.shuffle(members)
        parts.append(members[:keep[c]])
    return np.concatenate(parts).astype(np.int64)


def shot_accuracy(correct, test_labels, train_counts, many=100, few=20):
    """Accuracy (%) on the classes with many (> many), medium (few..many) and few (< few) training images.

    correct: bool [M], whether test image m was classified right; test_labels: [M];
    train_counts: [C] training images per class. Each group's figure is the mean over its classes of
    the per-class accuracy (OLTR's definition; on a balanced test set it equals the accuracy over the
    group's images). A group without classes, or without test images, is None.
    """
    correct = np.asarray(correct, dtype=bool)
    test_labels = np.asarray(test_labels, dtype=np.int64)
    counts = np.asarray(train_counts)
    if correct.ndim != 1 or correct.shape != test_labels.shape:
        raise ValueError(f"correct {correct.shape} and test_labels {test_labels.shape} must be two vectors [M]")
    hits = np.bincount(test_labels, weights=correct, minlength=len(counts))  # [C]
    tested = np.bincount(test_labels, minlength=len(counts))                 # [C]
    groups = {"many": counts > many, "medium": (counts >= few) & (counts <= many), "few": counts < few}
    out = {}
    for name, members in groups.items():
        members = members & (tested > 0)
        out[name] = float(np.mean(hits[members] / tested[members]) * 100) if members.any() else None
    return out
