"""The CXR score (runtime/cxr_score.py): real pictures refused, committed films passed, a tampered
parameter file refused, and the check in `inputs.prepare` for every path that classifies.

The per-path tests use a copy of the parameters with threshold 0 (every film refused by the score,
and only by it), so what they show is that each path runs the check, whatever the film.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from edgecxr.core.errors import BundleError
from edgecxr.data.io import load_image
from edgecxr.runtime import cxr_score
from edgecxr.runtime.cxr_score import SCORE_JSON, CxrScore, params_sha256
from edgecxr.runtime.input_checks import DEFAULT_RULES

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples" / "images").rglob("*.png"))
FILM = REPO / "examples/images/normal/kermany_IM-0122-0001.png"
NOT_CXR = "not like a frontal chest radiograph"


def _write_params(folder: Path, **changes) -> Path:
    meta = json.loads((cxr_score.SCORE_DIR / SCORE_JSON).read_text())
    meta["params"].update(changes)
    meta["params_sha256"] = params_sha256(meta["params"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SCORE_JSON).write_text(json.dumps(meta))
    return folder


def test_shipped_parameters_are_small_checked_and_fitted_on_the_shipped_gate():
    from edgecxr.runtime.orientation import shipped_gate

    assert (cxr_score.SCORE_DIR / SCORE_JSON).stat().st_size < 1_000_000
    score = cxr_score.shipped_score()
    assert score.gate_sha256 == shipped_gate().meta["sha256"] and score.threshold > 0
    assert score.meta["val_upright_pass"] >= 0.99


def test_committed_example_films_pass():
    assert EXAMPLES
    for path in EXAMPLES:
        assert cxr_score.check(load_image(path), DEFAULT_RULES) is None, path


def test_a_photo_a_chart_and_noise_are_refused():
    import cv2
    import matplotlib

    from edgecxr.stages.confidence import ood_large

    hopper = cv2.imread(str(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"), cv2.IMREAD_GRAYSCALE)
    noise = np.random.default_rng(0).integers(0, 256, (300, 300), dtype=np.uint8)
    for image in (hopper, noise):
        reason = cxr_score.check(image, DEFAULT_RULES)
        assert reason and reason.startswith(NOT_CXR) and "CXR score" in reason
    # charts: ~98% refused by the score alone on the FIT half (the pixel rules and the gate catch
    # the rest in the product), so most of ten, not each
    charts = [it.image for it in ood_large.build("report", 10, kinds=("chart",))]
    assert sum(cxr_score.check(c, DEFAULT_RULES) is not None for c in charts) >= 8


def test_the_switches_turn_it_off():
    from dataclasses import replace

    noise = np.random.default_rng(1).integers(0, 256, (300, 300), dtype=np.uint8)
    assert cxr_score.check(noise, replace(DEFAULT_RULES, cxr_score=False)) is None
    assert cxr_score.check(noise, DEFAULT_RULES.off()) is None
    assert cxr_score.describe(DEFAULT_RULES.off()) == "off"
    assert cxr_score.describe(DEFAULT_RULES).startswith("on: CXR score")


def test_a_tampered_parameter_file_is_refused(tmp_path):
    folder = _write_params(tmp_path / "ok")
    CxrScore.load(folder)  # the copy loads
    meta = json.loads((folder / SCORE_JSON).read_text())
    meta["params"]["threshold"] = 1e9  # let everything through
    (folder / SCORE_JSON).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="sha256"):
        CxrScore.load(folder)


def test_parameters_fitted_on_another_gate_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(cxr_score, "SCORE_DIR", _write_params(tmp_path / "other", gate_sha256="0" * 64))
    with pytest.raises(BundleError, match="refit"):
        cxr_score.shipped_score()


# -- every path that classifies runs the score (inputs.prepare) ----------------------------------------
@pytest.fixture()
def strict(tmp_path, monkeypatch) -> Path:
    """Parameters with threshold 0: the score refuses every film, so a path that runs it says so."""
    monkeypatch.setattr(cxr_score, "SCORE_DIR", _write_params(tmp_path / "strict", threshold=0.0))
    return FILM


def test_api_runs_it_and_the_switches_skip_it(tiny_bundle, strict):
    from dataclasses import replace

    from edgecxr.runtime.classifier import Classifier

    with Classifier.load(tiny_bundle.dir) as clf:
        (p,) = clf.predict([strict], workers=0)
        (q,) = clf.predict([load_image(strict)], workers=2)  # an array, the threaded decode path
        assert clf.audit["cxr_score"].startswith("on: CXR score")
    for pred in (p, q):
        assert pred.status == "rejected" and pred.reason.startswith(NOT_CXR) and pred.label is None
        assert pred.orientation == "upright"  # the gate ran first and passed it
    with Classifier.load(tiny_bundle.dir, input_rules=replace(DEFAULT_RULES, cxr_score=False)) as clf:
        (alone,) = clf.predict([strict], workers=0)
        assert clf.audit["cxr_score"] == "off"
    with Classifier.load(tiny_bundle.dir, input_rules=replace(DEFAULT_RULES, orientation="fix")) as clf:
        (fixed,) = clf.predict([strict], workers=0)
    with Classifier.load(tiny_bundle.dir, input_rules=None) as clf:
        (off,) = clf.predict([strict], workers=0)
    assert alone.ok and off.ok
    assert fixed.status == "rejected" and fixed.reason.startswith(NOT_CXR)


def test_cli_infer_reports_it(tiny_bundle, strict):
    from click.testing import CliRunner

    from edgecxr.cli import main

    r = CliRunner().invoke(main, ["infer", "-m", str(tiny_bundle.dir), "--json", str(strict)])
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    assert doc["predictions"][0]["status"] == "rejected" and doc["predictions"][0]["reason"].startswith(NOT_CXR)
    assert doc["audit"]["cxr_score"].startswith("on: CXR score")


def test_serve_classify_runs_it(tiny_bundle, strict):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    from edgecxr.serve import ModelSpec, ServeConfig
    from edgecxr.serve.server import start_in_thread

    running = start_in_thread(ServeConfig((ModelSpec.parse(f"tiny={tiny_bundle.dir}"),), port=0))
    try:
        r = httpx.post(f"{running.url}/v1/classify", content=strict.read_bytes(), params={"filename": "film.png"})
    finally:
        running.stop()
    assert r.status_code == 200, r.text
    pred = r.json()["predictions"][0]
    assert pred["status"] == "rejected" and pred["reason"].startswith(NOT_CXR)


def test_watch_folder_runs_it(tmp_path, tiny_bundle, strict):
    """`edgecxr watch` (and `listen`, through the same dicom.process) classify with Classifier.predict."""
    import shutil

    pytest.importorskip("highdicom")
    from edgecxr.dicom.watch import WatchFolder
    from edgecxr.runtime.classifier import Classifier

    drop, out = tmp_path / "drop", tmp_path / "out"
    drop.mkdir()
    shutil.copyfile(strict, drop / "film.png")
    now = [0.0]
    with warnings.catch_warnings(), Classifier.load(tiny_bundle.dir) as clf:
        w = WatchFolder(clf, drop, out, settle_s=1.0, log=lambda line: None, clock=lambda: now[0])
        w.poll()
        now[0] = 2.0
        w.poll()
    (pred,) = [json.loads(p.read_text())["predictions"][0] for p in out.glob("*.json")]
    assert pred["status"] == "rejected" and pred["reason"].startswith(NOT_CXR)


def test_bench_gate_times_the_score_on_the_gates_logits():
    from edgecxr.runtime.cxr_score import bench_distance

    out = bench_distance(load_image(FILM), iterations=5)
    assert 0 < out["median"] < 1.0  # a 16 x 16 quadratic form: microseconds
