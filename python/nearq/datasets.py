"""Small real datasets shipped inside the package."""

from __future__ import annotations

from importlib import resources
from typing import Tuple

import numpy as np


def minilm_10k() -> Tuple[np.ndarray, np.ndarray]:
    """10,000 all-MiniLM-L6-v2 sentence embeddings (384-d) of PyPI package summaries and 500
    query embeddings of other summaries, as float32 ``(train, test)``. Use ``metric="cosine"``.

    Stored as float16 (a slice of the ann-benchmarks file pypi-minilm-384-angular-50k)."""
    ref = resources.files("nearq").joinpath("data/minilm-10k.npz")
    with resources.as_file(ref) as path, np.load(path) as z:
        return z["train"].astype(np.float32), z["test"].astype(np.float32)
