"""Margins of the input checks on real X-rays: the numbers in docs/ARCHITECTURE.md "Input checks".

For every curated image (../shared/data/cxr/manifest-extended.csv: all splits and the extra train
images), the full-size originals
(../shared/data/cxr-originals) and the committed examples, prints the closest value to each rule's
threshold and how many images the default rules reject (which must be 0); and how many of the same
images, as negatives or turned 90 degrees, the polarity rules catch.

    .venv/bin/python scripts/input_check_margins.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from edgecxr.core.errors import ImageLoadError
from edgecxr.data.io import INPUT_SUFFIXES, load_image
from edgecxr.data.manifest import read_manifest
from edgecxr.runtime.input_checks import DEFAULT_RULES, _color_preview, color_score, pixel_stats

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def images() -> list[Path]:
    found = [r.path for r in read_manifest(SHARED / "cxr" / "manifest-extended.csv")]
    found += sorted(p for p in (SHARED / "cxr-originals").rglob("*") if p.suffix.lower() in INPUT_SUFFIXES)
    return found + sorted((REPO / "examples" / "images").glob("*/*.png"))


def _head(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(132)


def main() -> int:
    paths = images()
    spread, mode, auto, detail, polarity, sideways, chroma, side, aspect, rejected = [], [], [], [], [], [], [0.0], [], [], []
    negatives, turned = [], []  # polarity of 8-bit images as negatives, side polarity turned 90 degrees
    for i, path in enumerate(paths):
        try:
            image = load_image(path)
        except ImageLoadError as exc:
            print(f"{path}: {exc.reason}", file=sys.stderr)
            continue
        stats = pixel_stats(image)
        spread.append(stats["spread"])
        mode.append(stats["mode_fraction"])
        auto.append(stats["autocorrelation"])
        detail.append(stats["detail"])
        polarity.append(stats["polarity"])
        sideways.append(stats["side_polarity"])
        if image.dtype == np.uint8:
            negatives.append(pixel_stats(255 - image)["polarity"])
        turned.append(pixel_stats(np.rot90(image, 1 if i % 2 else 3).copy())["side_polarity"])
        h, w = image.shape
        side.append(min(h, w))
        aspect.append(max(h, w) / min(h, w))
        color = _color_preview(path, _head(path))
        if color is not None:
            chroma.append(color_score(color))
        reason = DEFAULT_RULES.check_file(path) or DEFAULT_RULES.check_pixels(image)
        if reason:
            rejected.append(f"{path}: {reason}")
    r = DEFAULT_RULES
    print(f"{len(paths)} images, {len(rejected)} rejected by the default rules")
    print(f"spread (p99-p1)      min {min(spread):.3f}   rule < {r.min_spread}")
    print(f"one-bin fraction     max {max(mode):.3f}   rule > {r.max_mode_fraction}")
    print(f"lag-1 autocorrelation min {min(auto):.3f}  rule < {r.min_autocorrelation}")
    print(f"detail (|Laplacian|) min {min(detail):.4f} rule < {r.min_detail}")
    print(f"polarity             min {min(polarity):.3f}  rule < {r.min_polarity} (median {np.median(polarity):.2f})")
    print(f"side polarity        max {max(sideways):.3f}   rule > {r.max_side_polarity}")
    print(f"negatives of them    {np.mean(np.array(negatives) < r.min_polarity):.0%} of {len(negatives)} below the "
          f"polarity rule (median {np.median(negatives):.2f})")
    print(f"turned 90 degrees    {np.mean(np.array(turned) > r.max_side_polarity):.0%} of {len(turned)} above the "
          f"side-polarity rule (median {np.median(turned):.2f})")
    print(f"chroma               max {max(chroma):.4f}  rule > {r.max_chroma}")
    print(f"short side           min {min(side)} px   rule < {r.min_side}")
    print(f"long/short           max {max(aspect):.2f}   rule > {r.max_aspect}")
    for line in rejected[:20]:
        print("  rejected:", line)
    return 1 if rejected else 0


if __name__ == "__main__":
    sys.exit(main())
