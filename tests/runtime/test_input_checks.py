"""Input checks (edgecxr.runtime.input_checks): each rule rejects what it should, real X-rays pass."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from integrity import hostile

from edgecxr.cli import main
from edgecxr.data.io import load_image
from edgecxr.runtime.classifier import Classifier, Prediction
from edgecxr.runtime.input_checks import InputRules
from runtime import tinymodels

RULES = InputRules()
EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples" / "images").glob("*/*.png"))


def _xray(index: int = 0, side: int = 256) -> np.ndarray:
    return hostile.example(index, side)


def _text_page() -> np.ndarray:
    page = np.full((512, 512), 255, np.uint8)
    for i in range(8):
        cv2.putText(page, "Lorem ipsum dolor", (10, 50 + 55 * i), cv2.FONT_HERSHEY_SIMPLEX, 1.4, 0, 3, cv2.LINE_AA)
    return page


def _photo() -> np.ndarray:
    photo = np.zeros((300, 400, 3), np.uint8)
    photo[..., 0] = np.linspace(0, 255, 400)[None]
    photo[..., 1] = 120
    photo[..., 2] = np.linspace(255, 0, 300)[:, None]
    return cv2.GaussianBlur(photo, (0, 0), 3)


def _dicom(tmp_path: Path, name: str = "x.dcm", **attrs: object) -> Path:
    path = tmp_path / name
    path.write_bytes(hostile.dicom_bytes(_xray(), **attrs))
    return path


# -- pixel rules ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("image", "words"),
    [
        (np.random.default_rng(0).integers(0, 256, (512, 512), dtype=np.uint8), "noise-like"),
        (np.clip(np.random.default_rng(1).normal(128, 40, (512, 512)), 0, 255).astype(np.uint8), "noise-like"),
        (np.random.default_rng(2).integers(0, 4096, (600, 600), dtype=np.uint16), "noise-like"),
        (np.zeros((512, 512), np.uint8), "blank"),
        (np.full((512, 512), 255, np.uint8), "blank"),
        (np.full((300, 300), 0.4, np.float32), "blank"),
        (_text_page(), "one gray level"),
        (_photo(), "color image"),
        (np.tile(np.linspace(0, 255, 1000).astype(np.uint8), (100, 1)), "aspect ratio"),
        (cv2.resize(_xray(), (40, 48)), "too small"),
        (np.tile(np.linspace(100, 160, 384).astype(np.uint8), (384, 1)), "no fine structure"),
        (cv2.resize(np.random.default_rng(3).integers(0, 256, (8, 8)).astype(np.float32), (384, 384),
                    interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8), "no fine structure"),
    ],
    ids=["uniform", "gauss", "noise16", "black", "white", "const-float", "text", "photo", "strip", "tiny", "ramp",
         "blobs"],
)
def test_pixel_rules_reject(image, words):
    reason = RULES.check_pixels(image)
    assert reason is not None and words in reason and "\n" not in reason
    assert InputRules.off().check_pixels(image) is None


def test_real_xrays_pass_in_every_dtype():
    img = _xray(1)
    assert RULES.check_pixels(img) is None
    assert RULES.check_pixels(img.astype(np.uint16) * 16) is None  # 12-bit in 16
    assert RULES.check_pixels(img.astype(np.float32) / 255) is None
    assert RULES.check_pixels(cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)) is None  # gray stored as RGB


def test_a_negative_is_rejected_as_inverted():
    inverted = [RULES.check_pixels(255 - hostile.example(i, 320)) or "" for i in range(4)]
    assert sum("looks inverted" in r for r in inverted) >= 3, inverted  # 77% of real films' negatives fall below -0.25
    assert all(RULES.check_pixels(hostile.example(i, 320)) is None for i in range(4))
    assert InputRules(min_polarity=-1).check_pixels(255 - hostile.example(0, 320)) is None


def test_a_film_turned_on_its_side_is_rejected():
    turned = [RULES.check_pixels(np.rot90(hostile.example(i, 320), 1 + 2 * (i % 2)).copy()) or "" for i in range(6)]
    assert sum("turned on its side" in r for r in turned) >= 4, turned  # 82% of turned real films exceed 0.22
    assert InputRules(max_side_polarity=1).check_pixels(np.rot90(hostile.example(0, 320)).copy()) is None


def test_thresholds_are_configurable():
    strip = np.tile(np.linspace(0, 255, 1000).astype(np.uint8), (100, 1))
    assert "no fine structure" in InputRules(max_aspect=20).check_pixels(strip)  # a ramp: the next rule
    assert InputRules(max_aspect=20, min_detail=0).check_pixels(strip) is None
    assert "too small" in InputRules(min_side=300).check_pixels(_xray(side=256))


@pytest.mark.skipif(not EXAMPLES, reason="no committed example images")
def test_committed_examples_all_pass():
    for path in EXAMPLES:
        assert RULES.check_file(path) is None, path
        assert RULES.check_pixels(load_image(path)) is None, path


def test_color_png_and_jpeg_files(tmp_path):
    for ext in (".png", ".jpg"):
        photo = tmp_path / f"photo{ext}"
        cv2.imwrite(str(photo), _photo())
        assert "color image" in (RULES.check_file(photo) or "")
        gray_rgb = tmp_path / f"gray{ext}"
        cv2.imwrite(str(gray_rgb), cv2.cvtColor(_xray(), cv2.COLOR_GRAY2BGR))
        assert RULES.check_file(gray_rgb) is None


# -- DICOM header rules ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("attrs", "words"),
    [
        ({"Modality": "CT"}, "Modality CT"),
        ({"Modality": "MR"}, "Modality MR"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"}, "SOP class CT"),
        ({"BodyPartExamined": "HEAD"}, "BodyPartExamined HEAD"),
        ({"ViewPosition": "LL"}, "lateral view (ViewPosition LL)"),
        ({"ViewPosition": "LATERAL"}, "lateral view"),
    ],
)
def test_dicom_header_rules_reject(tmp_path, attrs, words):
    reason = RULES.check_file(_dicom(tmp_path, **attrs))
    assert reason is not None and words in reason


@pytest.mark.parametrize(
    "attrs",
    [{}, {"Modality": "CR"}, {"Modality": "DR"}, {"BodyPartExamined": "CHEST", "ViewPosition": "AP"},
     {"ViewPosition": "PA"}, {"Modality": ""}],
)
def test_dicom_header_rules_accept(tmp_path, attrs):
    assert RULES.check_file(_dicom(tmp_path, **attrs)) is None


def test_dicom_header_values_are_case_insensitive():
    from types import SimpleNamespace

    assert RULES.check_header(SimpleNamespace(Modality="dx", BodyPartExamined="Chest ", ViewPosition="pa")) is None
    assert "lateral" in RULES.check_header(SimpleNamespace(Modality="DX", ViewPosition="rl"))


def test_dicom_rules_configurable(tmp_path):
    lateral = _dicom(tmp_path, ViewPosition="LL")
    assert InputRules(views=("PA", "AP", "LL")).check_file(lateral) is None
    assert InputRules.off().check_file(_dicom(tmp_path, "ct.dcm", Modality="CT")) is None


# -- Classifier and CLI ---------------------------------------------------------------------------
def test_rejected_inputs_never_reach_the_model(tiny_onnx, tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (256, 256), dtype=np.uint8)
    ct = _dicom(tmp_path, "ct.dcm", Modality="CT")
    with Classifier.load(tiny_onnx) as clf:
        calls = []
        infer = clf.runner.infer_outputs
        clf.runner.infer_outputs = lambda batch: (calls.append(len(batch)), infer(batch))[1]
        preds = clf.predict([_xray(), noise, ct, tmp_path / "missing.png"])
    assert calls == [1]
    assert [p.status for p in preds] == ["ok", "rejected", "rejected", "failed"]
    assert [p.ok for p in preds] == [True, False, False, False]
    assert preds[1].label is None and preds[1].probabilities == {} and "noise" in preds[1].reason
    assert "Modality CT" in preds[2].reason and preds[2].error is None
    assert preds[3].error and preds[3].reason == preds[3].error
    with Classifier.load(tiny_onnx, input_rules=None) as clf:
        assert all(p.ok for p in clf.predict([noise, ct]))


def test_prediction_dict_has_status_and_reason():
    data = Prediction("a.png", status="rejected", reason="blank").to_dict()
    assert data["status"] == "rejected" and data["reason"] == "blank" and data["label"] is None


def test_cli_reports_rejections_in_json_csv_table_and_exit_code(tiny_bundle, tmp_path):
    good = tinymodels.real_images(1)
    if not good:
        pytest.skip("no real X-ray images available")
    noise = tmp_path / "noise.png"
    cv2.imwrite(str(noise), np.random.default_rng(0).integers(0, 256, (256, 256), dtype=np.uint8))
    bad = tmp_path / "empty.png"
    bad.write_bytes(b"")
    out = tmp_path / "p.csv"
    cli = CliRunner()
    args = ["infer", "-m", str(tiny_bundle.dir), str(good[0]), str(noise), str(bad)]
    result = cli.invoke(main, [*args, "--json", "--csv", str(out)])
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert doc["rejected"] == 1 and doc["failed"] == 1
    assert [p["status"] for p in doc["predictions"]] == ["ok", "rejected", "failed"]
    assert "noise" in doc["predictions"][1]["reason"]
    assert "1 of 3 image(s) classified, 1 rejected, 1 failed" in result.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert rows[1]["status"] == "rejected" and "noise" in rows[1]["reason"] and rows[1]["label"] == ""
    assert rows[0]["status"] == "ok" and rows[0]["reason"] == ""
    table = cli.invoke(main, args[:5])
    assert table.exit_code == 1 and "REJECTED" in table.stdout and "noise-like" in table.stdout
    off = cli.invoke(main, [*args[:5], "--no-input-checks"])
    assert off.exit_code == 0 and "REJECTED" not in off.stdout and "warning: --no-input-checks" in off.stderr
