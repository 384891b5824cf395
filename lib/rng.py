"""Every random number generator a training step draws from, captured as tensors and plain numbers.

A checkpoint holds one capture per process, so that a resumed run draws exactly the augmentations,
k-means seeds and shuffles the uninterrupted run would have drawn. Plain values (no numpy arrays,
no tuples of Python objects) let the checkpoint load with torch.load(weights_only=True).
"""
import random

import numpy as np
import torch


def capture():
    """The state of torch's CPU (and current CUDA) generator, numpy's and Python's, as a plain dict."""
    kind, key, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, words, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),                                      # uint8 [5056]
        "numpy": {"kind": kind, "key": torch.from_numpy(key.astype(np.int64)),   # MT19937 words [624]
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": {"version": version, "words": torch.tensor(words, dtype=torch.int64),   # [625]
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore(state):
    """Undo capture(): every generator continues exactly where the captured one stood."""
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["key"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["cached_gaussian"]))
    python = state["python"]
    random.setstate((python["version"], tuple(python["words"].tolist()), python["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
