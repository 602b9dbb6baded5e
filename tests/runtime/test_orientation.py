"""The orientation gate: its transforms, the shipped model on committed X-rays, and where it runs.

The shipped gate (edgecxr/reference/orientation) is run on committed CC BY example films, turned,
flipped and inverted here: each must be refused with its reason, and the upright film answered.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgecxr.core.errors import BundleError
from edgecxr.data.io import load_image
from edgecxr.runtime import orientation
from edgecxr.runtime.orientation import BY_NAME, MIRROR, TRANSFORMS, OrientationGate, gate_input, negate

REPO = Path(__file__).resolve().parents[2]
#: committed CC BY films (examples/images/README.md), one normal, one pneumonia
FILMS = [REPO / "examples/images/normal/kermany_IM-0122-0001.png",
         REPO / "examples/images/pneumonia_viral/kermany_person122_virus_229.png"]


@pytest.fixture(scope="module")
def gate() -> OrientationGate:
    return orientation.shipped_gate()


@pytest.fixture(scope="module")
def films() -> list[np.ndarray]:
    return [load_image(p) for p in FILMS]


# -- the transforms ------------------------------------------------------------------------------
def test_sixteen_distinct_transforms_each_undone_and_mirrored_consistently():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (5, 7), dtype=np.uint8)  # not square: turns change the shape
    outs = {t.name: t.apply(img) for t in TRANSFORMS}
    assert len(TRANSFORMS) == 16 and len({(o.shape, o.tobytes()) for o in outs.values()}) == 16
    for t in TRANSFORMS:
        assert np.array_equal(t.undo(t.apply(img)), img), t.name
        # the mirror pair: the same layout of a left-right mirrored film
        assert np.array_equal(t.mirrored.apply(img), t.apply(np.fliplr(img))), t.name
        assert TRANSFORMS[MIRROR[TRANSFORMS.index(t)]] == t.mirrored
    assert np.array_equal(BY_NAME["rot180"].apply(img), img[::-1, ::-1])
    assert np.array_equal(BY_NAME["flip"].apply(img), img[::-1])
    assert np.array_equal(BY_NAME["rot90"].apply(img), np.rot90(img))
    assert BY_NAME["flip+rot180"].reason == "flipped left-right"
    assert BY_NAME["neg+rot180"].reason == "a negative (inverted), turned 180 degrees"


def test_negate_keeps_dtype_and_scale():
    assert negate(np.array([0, 200], np.uint8)).tolist() == [255, 55]
    assert negate(np.array([0, 4000], np.uint16)).tolist() == [4095, 95]  # 12-bit stays 12-bit
    assert np.allclose(negate(np.array([0.25], np.float32)), [0.75])


def test_gate_input_ignores_exposure_and_bit_depth(films):
    a = gate_input(films[0], 64)
    b = gate_input(films[0].astype(np.uint16) * 200, 64)
    assert a.shape == (64, 64, 1) and a.dtype == np.float32
    assert np.abs(a - b).max() < 0.05
    assert abs(float(a.mean())) < 1e-4 and abs(float(a.std()) - 1) < 1e-3


# -- the shipped gate ------------------------------------------------------------------------------
def test_shipped_gate_is_small_and_checked(gate):
    assert gate.path.stat().st_size < 1 << 20
    assert gate.meta["classes"] == [t.name for t in TRANSFORMS]
    assert 0 < gate.threshold <= 0.5


def test_upright_films_are_answered(gate, films):
    for img in films:
        v = gate.check(img)
        assert v.upright, v
        assert v.reason == "upright"


@pytest.mark.parametrize(("name", "words"), [
    ("rot90", ("90 degrees",)),
    ("rot270", ("90 degrees",)),
    ("rot180", ("turned 180 degrees", "flipped top-bottom")),  # a mirror pair: either name is right
    ("flip", ("turned 180 degrees", "flipped top-bottom")),
    ("neg", ("negative",)),
    ("neg+rot180", ("negative",)),
])
def test_turned_flipped_and_inverted_films_are_refused_with_the_reason(gate, films, name, words):
    for img in films:
        v = gate.check(BY_NAME[name].apply(img))
        assert not v.upright, (name, v)
        assert any(w in v.reason for w in words), (name, v.reason)


def test_a_tampered_gate_is_refused(tmp_path):
    import shutil

    for f in (orientation.GATE_ONNX, orientation.GATE_JSON):
        shutil.copy(orientation.GATE_DIR / f, tmp_path / f)
    OrientationGate.load(tmp_path)  # the copy loads
    with open(tmp_path / orientation.GATE_ONNX, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match="sha256"):
        OrientationGate.load(tmp_path)


# -- every path that classifies runs the gate (inputs.prepare) ----------------------------------------
def _write(path: Path, image: np.ndarray) -> Path:
    import cv2

    assert cv2.imwrite(str(path), image)
    return path


@pytest.fixture()
def film_files(tmp_path, films) -> dict[str, Path]:
    img = films[0]
    return {name: _write(tmp_path / f"{name}.png", BY_NAME[name].apply(img)) for name in ("upright", "rot180", "neg+rot90")}


def test_api_rejects_a_turned_film_and_fix_turns_it_upright(tiny_bundle, film_files):
    from dataclasses import replace

    from edgecxr.runtime.classifier import Classifier
    from edgecxr.runtime.input_checks import DEFAULT_RULES

    files = [film_files["upright"], film_files["rot180"]]
    with Classifier.load(tiny_bundle.dir) as clf:
        up, turned = clf.predict(files, workers=0)
        assert clf.audit["orientation_gate"].startswith("reject: orientation gate")
    assert up.ok and up.orientation == "upright"
    assert turned.status == "rejected" and turned.label is None
    assert "turned 180 degrees" in turned.reason or "flipped top-bottom" in turned.reason
    with Classifier.load(tiny_bundle.dir, input_rules=replace(DEFAULT_RULES, orientation="fix")) as clf:
        up2, fixed = clf.predict(files, workers=2)  # the threaded decode path too
    assert fixed.ok and "turned upright before classification" in fixed.orientation
    if fixed.orientation.startswith("rot180:"):  # undone exactly: the upright film's answer
        assert fixed.probabilities == pytest.approx(up2.probabilities, abs=1e-6)
    with Classifier.load(tiny_bundle.dir, input_rules=None) as clf:  # all checks off: the gate too
        (off,) = clf.predict([film_files["rot180"]], workers=0)
    assert off.ok and off.orientation is None


def test_cli_infer_rejects_and_fixes(tiny_bundle, film_files):
    import json

    from click.testing import CliRunner

    from edgecxr.cli import main

    files = [str(film_files[k]) for k in ("upright", "rot180", "neg+rot90")]
    r = CliRunner().invoke(main, ["infer", "-m", str(tiny_bundle.dir), "--json", *files])
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    status = {Path(p["source"]).stem: (p["status"], p["reason"] or "") for p in doc["predictions"]}
    assert status["upright"][0] == "ok"
    assert status["rot180"][0] == "rejected" and "orientation gate" in status["rot180"][1]
    assert status["neg+rot90"][0] == "rejected"
    r = CliRunner().invoke(main, ["infer", "-m", str(tiny_bundle.dir), "--fix-orientation", "--json", *files])
    assert r.exit_code == 0, r.output
    fixed = {Path(p["source"]).stem: p["orientation"] for p in json.loads(r.stdout)["predictions"]}
    assert fixed["upright"] == "upright" and "turned upright" in fixed["rot180"] and "turned upright" in fixed["neg+rot90"]
    assert "2 film(s) turned upright" in r.stderr
    r = CliRunner().invoke(main, ["infer", "-m", str(tiny_bundle.dir), "--fix-orientation", "--no-input-checks", *files])
    assert r.exit_code == 2


def test_serve_classify_rejects_a_turned_film(tiny_bundle, film_files):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    from edgecxr.serve import ModelSpec, ServeConfig
    from edgecxr.serve.server import start_in_thread

    running = start_in_thread(ServeConfig((ModelSpec.parse(f"tiny={tiny_bundle.dir}"),), port=0))
    try:
        answers = {}
        for name in ("upright", "rot180"):
            r = httpx.post(f"{running.url}/v1/classify", content=film_files[name].read_bytes(), params={"filename": f"{name}.png"})
            assert r.status_code == 200, r.text
            answers[name] = r.json()["predictions"][0]
    finally:
        running.stop()
    assert answers["upright"]["status"] == "ok" and answers["upright"]["orientation"] == "upright"
    assert answers["rot180"]["status"] == "rejected" and "orientation gate" in answers["rot180"]["reason"]


def test_the_transformed_ood_set_has_every_kind_of_every_film(films):
    from types import SimpleNamespace

    from edgecxr.stages.confidence.ood_set import TRANSFORM_KINDS, transformed

    items = list(transformed([SimpleNamespace(path=p) for p in FILMS], "test"))
    assert [it.kind for it in items[:6]] == ["upright", *TRANSFORM_KINDS]
    assert len(items) == 2 * 6 and items[0].name == f"test-{FILMS[0].stem}"
    assert np.array_equal(items[2].image, films[0][::-1, ::-1])  # rot180
    assert np.array_equal(items[5].image, 255 - films[0])  # negative


def test_bench_gate_times_the_resize_and_the_run(films):
    from edgecxr.runtime.orientation import bench_gate

    out = bench_gate(films[0], iterations=5, warmup_s=0.0)
    assert out["iterations"] == 5 and out["image_size"] == [films[0].shape[1], films[0].shape[0]]
    assert 0 < out["onnx_ms"]["median"] <= out["total_ms"]["max"]
    assert bench_gate(None, iterations=2, warmup_s=0.0)["image_size"] == [2048, 2048]


def test_watch_folder_rejects_a_turned_film(tmp_path, tiny_bundle, film_files):
    """`edgecxr watch` (and `listen`, through the same dicom.process) classify with Classifier.predict."""
    import json
    import shutil

    pytest.importorskip("highdicom")
    from edgecxr.dicom.watch import WatchFolder
    from edgecxr.runtime.classifier import Classifier

    drop, out = tmp_path / "drop", tmp_path / "out"
    drop.mkdir()
    for name in ("upright", "rot180"):
        shutil.copyfile(film_files[name], drop / f"{name}.png")
    now = [0.0]
    with Classifier.load(tiny_bundle.dir) as clf:
        w = WatchFolder(clf, drop, out, settle_s=1.0, log=lambda line: None, clock=lambda: now[0])
        w.poll()
        now[0] = 2.0
        w.poll()
    preds = [json.loads(p.read_text())["predictions"][0] for p in out.glob("*.json")]
    by_status = {p["status"]: p for p in preds}
    assert sorted(by_status) == ["ok", "rejected"], preds
    assert by_status["ok"]["orientation"] == "upright"
    assert "orientation gate" in by_status["rejected"]["reason"]


def test_a_12_bit_dicom_turned_or_monochrome1_is_judged_as_displayed(tmp_path, tiny_bundle, films):
    """DICOM pixels reach the gate as the decoder shows them (float in [0, 1]): a 12-bit film turned
    180 degrees is refused; the same film stored MONOCHROME1 (inverted values, shown upright) is not a negative."""
    from data.cxr_fixtures import make_dicom

    from edgecxr.runtime.classifier import Classifier

    px = (films[0].astype(np.uint16) * 16)  # 12-bit
    up = make_dicom(tmp_path / "up.dcm", px, bits_stored=12, ViewPosition="PA")
    turned = make_dicom(tmp_path / "turned.dcm", np.ascontiguousarray(px[::-1, ::-1]), bits_stored=12, ViewPosition="PA")
    mono1 = make_dicom(tmp_path / "mono1.dcm", (4095 - px).astype(np.uint16), "MONOCHROME1", bits_stored=12,
                       ViewPosition="PA")
    with Classifier.load(tiny_bundle.dir) as clf:
        a, b, c = clf.predict([up, turned, mono1], workers=0)
    assert a.ok and a.orientation == "upright"
    assert b.status == "rejected" and "orientation gate" in b.reason
    assert c.ok and c.orientation == "upright", c.reason
