"""The gate's images: every film of a manifest, decoded once and kept as small gray copies.

Why a cache: the gate is trained on 16 transforms of ~1,600 films for a few epochs; decoding the
PNGs each time would cost more than the training. The cache is a .npz under ~/.cache/edgecxr
(never in the repository) keyed by the manifest's sha256 and the copy's size, holding per split
the float16 copies (`size` x `size`, made by the runtime's own `orientation.small_gray`).

Transforms commute with the square resize: turning or mirroring a film and then shrinking it
gives the same pixels as shrinking and then turning (INTER_AREA resamples each axis on its own),
and the gate standardizes each image, so a negative of the small copy is the small copy of the
negative. So `val` and `test` copies at the gate's input size are exactly what the runtime gate
sees of those films and their transforms; the larger `train` copies leave room for crops.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np


def cache_dir() -> Path:
    from edgecxr.runtime.fetch import cache_dir as root

    return root() / "orientation"


def small_copy(image: np.ndarray, size: int) -> np.ndarray:
    """A decoded image as the gate's (size, size) gray copy (`orientation.small_gray`), rescaled to
    [0, 1] by its own range (the gate standardizes each image, so only the picture matters)."""
    from edgecxr.runtime.orientation import small_gray

    small = small_gray(image, size)
    lo, hi = float(small.min()), float(small.max())
    return ((small - lo) / max(hi - lo, 1e-6)).astype(np.float16)


def load_split_copies(manifest: str | Path, splits: tuple[str, ...], sizes: tuple[int, ...],
                      progress: bool = True) -> dict[str, dict[int, np.ndarray]]:
    """{split: {size: (N, size, size) float16 in [0, 1]}} for the manifest's films, from the cache when it has them."""
    from edgecxr.core.fileutil import sha256_file

    manifest = Path(manifest)
    key = hashlib.sha256(f"{sha256_file(manifest)}|{','.join(splits)}|{sizes}|v2".encode()).hexdigest()[:16]
    path = cache_dir() / f"copies-{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as data:
            return {s: {z: data[f"{s}_{z}"] for z in sizes} for s in splits}
    from edgecxr.data.io import load_image
    from edgecxr.data.manifest import read_manifest, select

    records = read_manifest(manifest)
    out: dict[str, dict[int, np.ndarray]] = {}
    arrays: dict[str, np.ndarray] = {}
    for split in splits:
        recs = select(records, split)
        copies: dict[int, list[np.ndarray]] = {z: [] for z in sizes}
        for i, rec in enumerate(recs):
            image = load_image(rec.path)
            for z in sizes:
                copies[z].append(small_copy(image, z))
            if progress and (i + 1) % 200 == 0:
                print(f"  {split}: {i + 1}/{len(recs)} decoded", flush=True)
        out[split] = {z: np.stack(v) if v else np.zeros((0, z, z), np.float16) for z, v in copies.items()}
        arrays.update({f"{split}_{z}": a for z, a in out[split].items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return out
