"""Packs (edgecxr.data.packed): a manifest's train/val images in one file, read by `edgecxr train --data PACK`.

The contract that matters: a pack gives training the very arrays the manifest gives it (bit for bit),
for PNG and large JPEG inputs alike, and the bundle records the same dataset identity.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from cxr_fixtures import write_jpeg, xray
from manifest_files import write_manifest

from edgecxr.core.errors import DataError
from edgecxr.data.dataset import load_arrays
from edgecxr.data.manifest import CLASSES_3, manifest_sha256, read_manifest, select
from edgecxr.data.packed import Pack, data_identity, is_pack, load_training_arrays, main, pack, read_records
from edgecxr.models import default_spec


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """3 classes x (train 3, val 2, test 1) real X-rays: PNG, large JPEG (reduced decode) and RGB PNG."""
    root = tmp_path_factory.mktemp("packed")
    rows, k = [], 0
    for label in CLASSES_3:
        for split, n in (("train", 3), ("val", 2), ("test", 1)):
            for i in range(n):
                image = xray(k, crop=k)
                rel = f"images/{label}/{split}_{i}"
                if k % 3 == 0:
                    big = cv2.resize(image, (image.shape[1] * 3, image.shape[0] * 3))  # decoded at a reduced scale
                    write_jpeg(root / f"{rel}.jpg", big)
                    rel += ".jpg"
                else:
                    (root / rel).parent.mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(str(root / f"{rel}.png"), cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if k % 3 == 1 else image)
                    rel += ".png"
                rows.append({"relative_path": rel, "label": label, "split": split, "patient_id": f"{label}:{i}"})
                k += 1
    return write_manifest(root / "manifest.csv", rows)


@pytest.fixture(scope="module")
def packed(manifest, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pack") / "cxr.npz"
    summary = pack(manifest, out, sizes=[32, 48])
    assert summary["images"] == 15 and summary["sizes"] == [32, 48]  # train + val only: test is never packed
    return out


@pytest.mark.parametrize(("model", "side"), [("coronet", 48), ("cnn-lstm", 32)])
def test_pack_gives_the_arrays_the_manifest_gives(manifest, packed, model, side):
    spec = default_spec(model, side)
    records = select(read_manifest(manifest), ("train", "val"))
    want_x, want_y = load_arrays(records, spec, CLASSES_3, progress=False)
    got_records = read_records(packed)
    assert [(r.relative_path, r.label, r.split, r.patient_group) for r in got_records] == \
        [(r.relative_path, r.label, r.split, r.patient_group) for r in records]
    got_x, got_y = load_training_arrays(packed, got_records, spec, CLASSES_3)
    assert got_x.dtype == np.float32 and got_x.shape == want_x.shape
    np.testing.assert_array_equal(got_x, want_x)
    np.testing.assert_array_equal(got_y, want_y)


def test_pack_identity_and_refusals(manifest, packed, tmp_path):
    assert is_pack(packed) and not is_pack(manifest)
    ident = data_identity(packed)
    assert ident["sha256"] == manifest_sha256(manifest) == data_identity(manifest)["sha256"]
    assert ident["pack"]["sizes"] == [32, 48] and len(ident["pack"]["sha256"]) == 64
    p = Pack(packed)
    with pytest.raises(DataError, match="not 64; pack it again with --size 64"):
        p.arrays(p.records, default_spec("cnn-lstm", 64), CLASSES_3)
    fake = tmp_path / "other.npz"
    np.savez(fake, meta=np.frombuffer(json.dumps({"format": "x"}).encode(), dtype=np.uint8))
    with pytest.raises(DataError, match="not an edgecxr pack"):
        Pack(fake)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not an edgecxr pack"):
        Pack(tmp_path / "junk.npz")


def test_pack_refuses_an_image_its_manifest_does_not_vouch_for(manifest, tmp_path, capsys):
    rows = list(csv.DictReader(open(manifest, newline="")))
    rows[0]["sha256"] = "0" * 64
    bad = manifest.parent / "bad-sha.csv"
    with open(bad, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert main([str(bad), str(tmp_path / "p.npz"), "--size", "32"]) == 1
    assert "sha256" in capsys.readouterr().err and not (tmp_path / "p.npz").exists()


def test_train_reads_a_pack(manifest, packed, tmp_path):
    """`edgecxr train --data PACK`: the bundle names the packed manifest's sha256 and the pack."""
    pytest.importorskip("keras")
    from edgecxr.core.bundle import Bundle
    from edgecxr.stages.train.config import TrainConfig
    from edgecxr.stages.train.run import train

    out = tmp_path / "run"
    train(TrainConfig(model="cnn-lstm", data=str(packed), out=str(out), tiny=True, epochs=1, batch_size=4))
    meta = Bundle.load(out).meta
    assert meta["dataset"]["sha256"] == manifest_sha256(manifest)
    assert meta["dataset"]["pack"]["sha256"] == Pack(packed).sha256()
    assert meta["dataset"]["counts"]["train"] == dict.fromkeys(CLASSES_3, 3)
