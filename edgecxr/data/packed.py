"""A manifest's training images packed into one small file, for training where the images are not.

Why: a GPU machine lent for minutes gets the working tree and nothing beside it (the data folder
does not travel, and what travels is capped at 64 MiB), so `scripts/train_on_gpu.sh prepare` packs the
`train` and `val` images here and `edgecxr train --data PACK.npz` reads them there.

What is packed is each image exactly as training would see it before scaling: decoded
(`load_image`), reduced to gray and to the 256 levels, and resized to the model's input side, as uint8;
each image is stored as a lossless PNG (X-rays compress ~2x; raw uint8 at 224x224 would not fit).
`preprocess` of such an image is bit-identical to `preprocess` of the original file at that side
(gray uint8 of the right size passes through unchanged to the scaling step), so a run on a pack sees
the arrays a run on the manifest sees; tests/data/test_packed.py checks it. The pack also holds the
manifest's sha256 and the packed rows (path, label, split, patient group, sha256), so the bundle
records the same dataset identity either way.

    python -m edgecxr.data.packed ../shared/data/cxr/manifest-extended.csv .gpu-train/coronet-150.npz --size 150
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgecxr.core.errors import DataError, EdgeCXRError
from edgecxr.core.spec import PreprocessSpec, preprocess, to_gray
from edgecxr.data.io import load_image
from edgecxr.data.manifest import (
    Record,
    checked_sha256,
    label_indices,
    manifest_sha256,
    read_manifest,
    select,
)

FORMAT = "edgecxr-pack"
VERSION = 1
SUFFIX = ".npz"
_ROW_KEYS = ("relative_path", "label", "split", "patient_id", "patient_group", "sha256")


def is_pack(path: str | Path) -> bool:
    """Whether `--data` names a pack rather than a manifest CSV (by suffix: a pack is a NumPy .npz)."""
    return Path(path).suffix.lower() == SUFFIX


def gray_at(image: np.ndarray, side: int) -> np.ndarray:
    """The uint8 gray image at side x side that `preprocess` scales: the same steps, stopped before scaling."""
    from edgecxr.core.spec import _to_8bit_levels

    gray = _to_8bit_levels(np.ascontiguousarray(to_gray(np.asarray(image))))
    if gray.shape != (side, side):
        interp = cv2.INTER_AREA if side * side < gray.size else cv2.INTER_LINEAR
        gray = cv2.resize(gray, (side, side), interpolation=interp)
    return gray


def pack(manifest: str | Path, out: str | Path, sizes: Sequence[int], splits: Sequence[str] = ("train", "val"),
         progress: bool = False) -> dict[str, Any]:
    """Write the `splits` images of `manifest` at each side in `sizes` to `out` (.npz); return its summary.

    Every file is checked against its manifest sha256 as training checks it, so a pack never holds
    an image the manifest does not vouch for.
    """
    if not sizes:
        raise EdgeCXRError("give at least one --size")
    out = Path(out)
    if not is_pack(out):
        raise EdgeCXRError(f"{out}: a pack is written as a {SUFFIX} file")
    records = select(read_manifest(manifest), list(splits))
    if not records:
        raise DataError(f"{manifest}: no rows in split(s) {', '.join(splits)}")
    encoded: dict[int, list[bytes]] = {int(s): [] for s in sizes}
    for i, rec in enumerate(records):
        for side in encoded:  # decoded per side: a large JPEG is decoded at a reduced scale chosen by the side
            image = load_image(rec.path, (side, side))
            ok, buf = cv2.imencode(".png", gray_at(image, side), [cv2.IMWRITE_PNG_COMPRESSION, 9])
            if not ok:  # pragma: no cover - OpenCV encodes any uint8 2-D array
                raise EdgeCXRError(f"{rec.path}: PNG encoding failed")
            encoded[side].append(buf.tobytes())
        if rec.sha256 is not None:  # after decoding, as load_arrays: a missing file is an ImageLoadError
            checked_sha256(rec)
        if progress and (i + 1) % 200 == 0:
            print(f"  packed {i + 1}/{len(records)}", file=sys.stderr, flush=True)
    meta = {"format": FORMAT, "version": VERSION, "manifest": Path(manifest).name,
            "manifest_sha256": manifest_sha256(manifest), "splits": list(splits), "sizes": sorted(encoded),
            "rows": [{k: getattr(r, k) for k in _ROW_KEYS} for r in records]}
    arrays: dict[str, np.ndarray] = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    for side, blobs in encoded.items():
        arrays[f"png_{side}"] = np.frombuffer(b"".join(blobs), dtype=np.uint8)
        arrays[f"offsets_{side}"] = np.cumsum([0, *map(len, blobs)], dtype=np.int64)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, **arrays)  # PNG bytes do not compress further
    tmp.replace(out)
    return {"pack": str(out), "images": len(records), "sizes": sorted(encoded), "bytes": out.stat().st_size,
            "manifest_sha256": meta["manifest_sha256"]}


class Pack:
    """A pack opened for training: its rows as manifest Records, and their arrays at a spec's size."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with np.load(self.path, allow_pickle=False) as z:
                self._arrays = {k: z[k] for k in z.files}
            meta = json.loads(self._arrays["meta"].tobytes())
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{self.path}: not an edgecxr pack ({exc})") from None
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise DataError(f"{self.path}: not an edgecxr pack of version {VERSION} "
                            f"(format {meta.get('format')!r}, version {meta.get('version')!r})")
        self.meta = meta
        self.manifest_sha256: str = meta["manifest_sha256"]
        root = self.path.resolve().parent
        self.records = [Record(root / row["relative_path"], row["relative_path"], row["label"], row["split"],
                               row["patient_id"], row["patient_group"], row["sha256"], line=i + 2)
                        for i, row in enumerate(meta["rows"])]
        self._index = {row["relative_path"]: i for i, row in enumerate(meta["rows"])}

    def sha256(self) -> str:
        """The pack file's own digest (which images, exactly, a run saw)."""
        h = hashlib.sha256()
        with open(self.path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()

    def image(self, rec: Record, side: int) -> np.ndarray:
        """The packed uint8 gray image of `rec` at `side`."""
        if f"png_{side}" not in self._arrays:
            raise DataError(f"{self.path} holds images at {self.meta['sizes']} px, not {side}; "
                            f"pack it again with --size {side}")
        try:
            i = self._index[rec.relative_path]
        except KeyError:
            raise DataError(f"{self.path}: {rec.relative_path} is not in the pack") from None
        start, end = self._arrays[f"offsets_{side}"][i : i + 2]
        return cv2.imdecode(self._arrays[f"png_{side}"][start:end], cv2.IMREAD_UNCHANGED)

    def arrays(self, records: Sequence[Record], spec: PreprocessSpec, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(X float32 NHWC, y int64): what `load_arrays` gives for the same records from the files."""
        if spec.height != spec.width:
            raise DataError(f"packs hold square images; the spec is {spec.height}x{spec.width}")
        y = label_indices(records, classes)
        x = np.empty((len(records), *spec.input_shape), dtype=np.float32)
        for i, rec in enumerate(records):
            x[i] = preprocess(self.image(rec, spec.height), spec)
        return x, y


# -- what `edgecxr train` calls: a manifest CSV or a pack, the same way ----------------------------------
def read_records(data: str | Path) -> list[Record]:
    """The records of `--data`: a manifest's rows, or the rows packed into a pack."""
    return Pack(data).records if is_pack(data) else read_manifest(data)


def data_identity(data: str | Path) -> dict[str, Any]:
    """What a bundle records about `--data`: the manifest's sha256 (the packed manifest's, for a pack)."""
    if not is_pack(data):
        return {"manifest": str(Path(data).resolve()), "sha256": manifest_sha256(data)}
    p = Pack(data)
    return {"manifest": p.meta["manifest"], "sha256": p.manifest_sha256,
            "pack": {"path": str(p.path.resolve()), "sha256": p.sha256(), "sizes": p.meta["sizes"]}}


def load_training_arrays(data: str | Path, records: Sequence[Record], spec: PreprocessSpec, classes: Sequence[str],
                         progress: bool | str = False) -> tuple[np.ndarray, np.ndarray]:
    """`load_arrays` for a manifest, `Pack.arrays` for a pack."""
    if is_pack(data):
        return Pack(data).arrays(records, spec, classes)
    from edgecxr.data.dataset import load_arrays

    return load_arrays(records, spec, classes, progress=progress)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgecxr.data.packed", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifest")
    ap.add_argument("out", help="the pack to write (.npz)")
    ap.add_argument("--size", type=int, action="append", required=True, help="input side to pack (repeatable)")
    ap.add_argument("--splits", nargs="+", default=["train", "val"])
    args = ap.parse_args(argv)
    try:
        summary = pack(args.manifest, args.out, args.size, args.splits, progress=True)
    except EdgeCXRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
