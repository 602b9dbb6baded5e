"""Write the five inputs of docs/SAFETY.md's first example into a folder.

    .venv/bin/python scripts/safety_examples.py safety-examples/
    .venv/bin/edgecxr infer safety-examples/*

A committed CC BY example X-ray, the same film as a negative, uniform noise, and the Grace Hopper
portrait matplotlib ships (a U.S. Navy photograph, public domain) in color and a gray crop of it.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
XRAY = REPO / "examples" / "images" / "normal" / "kermany_IM-0122-0001.png"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    import matplotlib

    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(XRAY, out / "1-xray.png")
    cv2.imwrite(str(out / "2-inverted.png"), 255 - cv2.imread(str(XRAY), cv2.IMREAD_GRAYSCALE))
    cv2.imwrite(str(out / "3-noise.png"), np.random.default_rng(0).integers(0, 256, (512, 512), dtype=np.uint8))
    hopper = cv2.imread(str(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"))
    cv2.imwrite(str(out / "4-hopper.jpg"), hopper)
    gray = cv2.cvtColor(hopper, cv2.COLOR_BGR2GRAY)
    h, w = gray.shape
    cv2.imwrite(str(out / "5-hopper-gray-crop.png"), gray[: h // 2, : w // 2])  # the OOD set's grace_hopper-crop0
    print(f"wrote 5 images to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
