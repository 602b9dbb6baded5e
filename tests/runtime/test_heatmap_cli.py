"""`edgecxr infer --heatmap DIR` and the overlay renderer (runtime/overlay.py, cli/heatmap_output.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edgecxr.cli import main
from edgecxr.runtime.heatmap import OCCLUSION, HeatMap
from edgecxr.runtime.overlay import display_image, overlay_name, render
from runtime import tinymodels


@pytest.fixture()
def cli():
    return CliRunner()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tinymodels.make_onnx(tmp_path_factory.mktemp("hm") / "tiny.onnx")


@pytest.fixture()
def scans(tmp_path):
    """Two real X-rays (same file name in two folders), a noise PNG (rejected) and broken files."""
    found = tinymodels.real_images(2)
    if len(found) < 2:
        pytest.skip("no real X-ray images available")
    a = tinymodels.copy_images(found[:1], tmp_path / "scans" / "a")[0]
    b = tinymodels.copy_images(found[1:2], tmp_path / "scans" / "b")[0]
    b = b.rename(b.with_name(a.name))  # same name, other folder: two overlays, neither overwritten
    noise = tmp_path / "scans" / "noise.png"
    cv2.imwrite(str(noise), np.random.default_rng(0).integers(0, 256, (256, 256), dtype=np.uint8))
    broken = tinymodels.broken_files(tmp_path / "scans" / "broken")
    return {"ok": [a, b], "noise": noise, "broken": broken, "root": tmp_path / "scans"}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_one_png_per_classified_input_and_none_for_the_others(cli, model, scans, tmp_path):
    out = tmp_path / "maps"
    before = snapshot(scans["root"])
    result = cli.invoke(main, ["infer", "-m", str(model), str(scans["root"]), "--heatmap", str(out), "--json"])
    assert result.exit_code == 1, result.output  # rejected and failed inputs
    assert "Traceback" not in result.output
    doc = json.loads(result.stdout)
    ok = [p for p in doc["predictions"] if p["label"] is not None and p["status"] == "ok"]
    assert len(ok) == 2 and len(doc["predictions"]) == 3 + len(scans["broken"])
    pngs = sorted(out.iterdir())
    stem = scans["ok"][0].stem
    assert [p.name for p in pngs] == [f"{stem}-2.heatmap.png", f"{stem}.heatmap.png"]
    assert set(doc["heatmaps"]) == {p["source"] for p in ok}
    for source, entry in doc["heatmaps"].items():
        png = cv2.imread(entry["path"], cv2.IMREAD_UNCHANGED)
        original = cv2.imread(source, cv2.IMREAD_GRAYSCALE)
        assert png.shape == (*original.shape, 3)  # at the original's size, in color
        assert entry["model_runs"] == 1 + len(OCCLUSION.windows(tinymodels.SPEC.height, tinymodels.SPEC.width))
        label = next(p["label"] for p in doc["predictions"] if p["source"] == source)
        assert entry["target"] == label
    assert snapshot(scans["root"]) == before  # no input touched, nothing written beside them
    assert "wrote 2 heat map(s)" in result.stderr

    again = cli.invoke(main, ["infer", "-m", str(model), *map(str, scans["ok"]), "--heatmap", str(out)])
    assert again.exit_code == 0, again.output  # a rerun replaces its own overlays
    assert sorted(out.iterdir()) == pngs


def test_chosen_class_and_usage_errors(cli, model, scans, tmp_path):
    out = tmp_path / "maps"
    one = str(scans["ok"][0])
    result = cli.invoke(main, ["infer", "-m", str(model), one, "--heatmap", str(out), "--heatmap-class", "covid", "--json"])
    assert result.exit_code == 0, result.output
    assert [e["target"] for e in json.loads(result.stdout)["heatmaps"].values()] == ["covid"]
    for args, needle in [
        (["--heatmap", str(out), "--heatmap-class", "cat"], "not one of the model's classes"),
        (["--heatmap-class", "covid"], "needs --heatmap"),
        (["--heatmap", str(scans["root"])], "holds the input"),
        (["--heatmap", one], "is a file"),
    ]:
        result = cli.invoke(main, ["infer", "-m", str(model), one, *args])
        assert result.exit_code == 2, (args, result.output)
        assert needle in result.output and "Traceback" not in result.output
        assert result.output.count("error:") == 1
    # a new folder inside an input folder: the next run over that folder would read the overlays
    result = cli.invoke(main, ["infer", "-m", str(model), str(scans["ok"][0].parent), "--heatmap",
                               str(scans["ok"][0].parent / "maps")])
    assert result.exit_code == 2 and "inside the input folder" in result.output
    assert not (scans["ok"][0].parent / "maps").exists()


def test_a_link_in_the_way_is_not_written_through(cli, model, scans, tmp_path):
    out = tmp_path / "maps"
    out.mkdir()
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"keep me")
    os.symlink(victim, out / f"{scans['ok'][0].stem}.heatmap.png")
    result = cli.invoke(main, ["infer", "-m", str(model), str(scans["ok"][0]), "--heatmap", str(out)])
    assert result.exit_code == 1 and "symbolic link" in result.output
    assert victim.read_bytes() == b"keep me"


# -- the renderer ---------------------------------------------------------------------------------
def test_render_keeps_cold_pixels_gray_and_colors_hot_ones():
    gray = np.full((40, 60), 100, np.uint8)
    values = np.zeros((8, 8), np.float32)
    values[:4, :4] = 0.3  # hot top-left quarter
    heat = HeatMap(values, "x", 0, 0.9, 81, 8, 0.0, OCCLUSION)
    rgb = render(gray, heat)
    assert rgb.shape == (40, 60, 3) and rgb.dtype == np.uint8
    assert (rgb[-5:, -5:] == 100).all()  # cold: the radiograph unchanged
    corner = rgb[:5, :5].astype(int)
    assert np.ptp(corner, axis=2).min() > 30  # hot: colored (channels differ)


def test_display_image_windows_16_bit_and_caps_the_size():
    img16 = np.linspace(1000, 4000, 3000 * 100, dtype=np.float64).reshape(3000, 100).astype(np.uint16)
    out = display_image(img16, max_side=600)
    assert out.dtype == np.uint8 and out.shape == (600, 20)
    assert out.min() <= 2 and out.max() >= 253  # a 12-bit range spread over 8 bits, not a black image
    assert display_image(np.full((50, 50), 0.5, np.float32)).max() == 128


def test_overlay_names_never_collide():
    taken: set[str] = set()
    names = [overlay_name(s, taken) for s in ("a/x.png", "b/x.png", "c/x.dcm", "y.jpeg", 3)]
    assert names == ["x.heatmap.png", "x-2.heatmap.png", "x-3.heatmap.png", "y.heatmap.png", "input-3.heatmap.png"]


def test_display_image_takes_what_predict_takes(tmp_path):
    image = np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1))
    ok, png = cv2.imencode(".png", image)
    path = tmp_path / "x.png"
    path.write_bytes(png.tobytes())
    for item in (path, str(path), png.tobytes(), image):
        np.testing.assert_array_equal(display_image(item), image)
