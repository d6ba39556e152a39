"""Near-duplicate search over 64-bit perceptual hashes, vectorised (a bank may hold thousands).

Two images whose dHashes differ in at most a few bits look the same to a person (a re-save, a
resize, a slight recompression), so a bank holding both weighs that picture twice.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lib_safe_denoiser.errors import BankError

NEAR_DUPLICATE_DISTANCE = 4
"""Default largest Hamming distance (of 64 bits) reported as a near duplicate."""
HASH_BITS = 64
_ROWS_PER_CHUNK = 256
_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def check_distance(max_distance: int) -> int:
    if isinstance(max_distance, bool) or not isinstance(max_distance, int) or not 0 <= max_distance <= HASH_BITS:
        raise BankError(f"max_distance must be an integer from 0 to {HASH_BITS}, got {max_distance!r}")
    return max_distance


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x = a[:, None] ^ b[None, :]
    return _POPCOUNT8[x.view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1, dtype=np.int32)


def near_pairs(
    queries: Sequence[int], targets: Sequence[int], max_distance: int, *, same_set: bool = False
) -> list[tuple[int, int, int]]:
    """(query index, target index, distance) for every pair within ``max_distance``, sorted by query.

    With ``same_set`` the two sequences are one set: only pairs with target index < query index are
    returned (each pair once, the earlier image as the target), and no image is paired with itself.
    """
    if not queries or not targets:
        return []
    q = np.asarray(queries, dtype=np.uint64)
    t = np.asarray(targets, dtype=np.uint64)
    found: list[tuple[int, int, int]] = []
    for start in range(0, len(q), _ROWS_PER_CHUNK):
        d = _distances(q[start : start + _ROWS_PER_CHUNK], t)
        if same_set:
            rows = np.arange(start, start + d.shape[0])[:, None]
            d = np.where(np.arange(len(t))[None, :] < rows, d, HASH_BITS + 1)
        for i, j in zip(*np.nonzero(d <= max_distance), strict=True):
            found.append((start + int(i), int(j), int(d[i, j])))
    return found
