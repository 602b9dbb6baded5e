"""The drift arithmetic of `scripts/arm64_check.py --split` (issue 27 item 4), on hand-made results:
no emulation here (`make arm64-check` is the real run, minutes under QEMU)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "arm64_check.py"


@pytest.fixture(scope="module")
def ac():
    spec = importlib.util.spec_from_file_location("arm64_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def img(score, label="normal", status="ok", p=0.9):
    return {"score": score, "label": label, "status": status, "probabilities": {"normal": p, "covid": 1 - p}}


def result(model, precision, split, threshold, scores):
    """scores: name -> (x86 score, arm score or None, x86 p, arm p)."""
    images = {}
    for name, (x, a, px, pa) in scores.items():
        images[name] = {"truth": "normal", "x86": img(x, status="abstained" if x > threshold else "ok", p=px)}
        if a is not None:
            images[name]["arm"] = img(a, status="abstained" if a > threshold else "ok", p=pa)
    return {"model": model, "precision": precision, "split": split, "threshold": threshold,
            "emulated": sum(s[1] is not None for s in scores.values()), "images": images}


def test_drift_counts_score_and_probability_differences_and_flips(ac):
    r = result("coronet", "int8", "val", 8.0, {
        "a.png": (2.0, 2.1, 0.90, 0.91),     # |Δs| 0.1, |Δp| 0.01
        "b.png": (7.95, 8.05, 0.80, 0.78),   # crosses the threshold: a flip, |Δp| 0.02
        "c.png": (5.0, 4.7, 0.60, 0.60),     # |Δs| 0.3
        "d.png": (9.0, None, 0.5, None),     # x86 only: not part of the drift
    })
    d = ac.drift(r["images"])
    assert d["n"] == 3
    assert d["score"]["max"] == pytest.approx(0.3)
    assert d["score"]["p50"] == pytest.approx(0.1)
    assert d["score_mean_signed"] == pytest.approx((0.1 + 0.1 - 0.3) / 3)
    assert d["p"]["max"] == pytest.approx(0.02)
    assert d["verdict_flips"] == ["b.png"]
    assert d["statuses_equal"] == 2 and d["labels_equal"] == 3


def test_margins_count_films_within_the_measured_drift_of_the_threshold(ac):
    r = result("coronet", "int8", "val", 8.0, {
        "a.png": (2.0, None, 0.9, None), "b.png": (7.95, None, 0.9, None),
        "c.png": (8.2, None, 0.9, None), "d.png": (8.31, None, 0.9, None)})
    m = ac.margins(r["images"], 8.0, band=0.3)
    assert m["abstained"] == 2
    # the verdict is the runtime's: a score rounded onto the threshold may have abstained
    r["images"]["b.png"]["x86"]["status"] = "abstained"
    assert ac.margins(r["images"], 8.0, band=0.3)["abstained"] == 3
    assert m["within_band"] == 2  # b (-0.05) and c (+0.2); d is 0.31 away
    assert m["min_abs_margin"] == pytest.approx(0.05)
    assert [n for n, _ in m["nearest"][:2]] == ["b.png", "c.png"]
    assert ac.margins(r["images"], 8.0, band=None)["within_band"] is None


def test_cross_precision_compares_margins_not_raw_scores(ac):
    # same films, thresholds 8 (fp16) and 6 (int8): a score of 7 is 1 below fp16's, 1 above int8's
    fp16 = result("m", "fp16", "val", 8.0, {"a.png": (7.0, None, 0.9, None), "b.png": (3.0, None, 0.9, None)})
    int8 = result("m", "int8", "val", 6.0, {"a.png": (7.0, None, 0.9, None), "b.png": (1.5, None, 0.9, None)})
    c = ac.cross_precision(fp16["images"], 8.0, int8["images"], 6.0)
    assert c["n"] == 2
    assert c["margin_diff"]["max"] == pytest.approx(2.0)    # a: -1 vs +1
    assert c["margin_diff"]["p50"] == pytest.approx(1.25)   # b: -5 vs -4.5 -> 0.5
    assert c["verdict_disagree"] == ["a.png"]


def test_summarize_uses_each_models_drift_as_the_band_of_every_split(ac):
    val = result("coronet", "int8", "val", 8.0, {"a.png": (7.8, 8.1, 0.9, 0.9), "b.png": (3.0, 3.05, 0.9, 0.9)})
    test = result("coronet", "int8", "test", 8.0, {"t.png": (7.75, None, 0.9, None), "u.png": (1.0, None, 0.9, None)})
    fp16 = result("coronet", "fp16", "val", 9.0, {"a.png": (7.8, None, 0.9, None), "b.png": (3.0, None, 0.9, None)})
    s = ac.summarize([val, test, fp16])
    assert [(d["precision"], d["split"]) for d in s["drift"]] == [("int8", "val")]
    bands = {(m["precision"], m["split"]): (m["band"], m["within_band"]) for m in s["margins"]}
    assert bands[("int8", "test")] == (pytest.approx(0.3), 1)   # t.png is 0.25 below
    assert bands[("int8", "val")] == (pytest.approx(0.3), 1)
    assert bands[("fp16", "val")] == (None, None)                # fp16 not emulated: no band
    assert [(c["split"], c["precisions"]) for c in s["cross_precision"]] == [("val", ["fp16", "int8"])]
    text = "\n".join(ac.summary_lines(s))
    assert "| coronet | int8 | val | 2 | 0.300 |" in text and "a.png" in text


def test_split_films_spreads_a_limit_and_refuses_repeated_names(ac, tmp_path):
    rows = ["relative_path,label,split"] + [f"images/{c}/f{i}.png,{c},val" for i, c in
                                           enumerate(["covid"] * 4 + ["normal"] * 4)] + ["images/x/t.png,normal,test"]
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    films = ac.split_films(tmp_path / "manifest.csv", "val", limit=2)
    assert [f.parent.name for f in films] == ["covid", "normal"]
    assert films[0] == tmp_path / "images" / "covid" / "f0.png"
    assert len(ac.split_films(tmp_path / "manifest.csv", "val")) == 8
    (tmp_path / "dup.csv").write_text("relative_path,label,split\na/x.png,covid,val\nb/x.png,normal,val\n")
    with pytest.raises(ValueError, match="repeat"):
        ac.split_films(tmp_path / "dup.csv", "val")


def test_summarize_option_merges_drift_files_and_refuses_others(ac, tmp_path, capsys):
    good = tmp_path / "drift.json"
    good.write_text(json.dumps({"kind": "arm64-drift", "results": [
        result("coronet", "int8", "val", 8.0, {"a.png": (7.9, 8.05, 0.9, 0.9)})]}))
    more = tmp_path / "more.json"
    more.write_text(json.dumps({"kind": "arm64-drift", "results": [
        result("coronet", "int8", "val", 8.0, {"b.png": (3.0, 3.25, 0.9, 0.9)})]}))
    assert ac.main(["--summarize", str(good), str(more)]) == 0
    assert r"| coronet | int8 | val | 2 | 0.250 |" in capsys.readouterr().out
    bad = tmp_path / "other.json"
    bad.write_text("{}")
    with pytest.raises(SystemExit) as exc:
        ac.main(["--summarize", str(bad)])
    assert exc.value.code == 2


def test_split_needs_a_manifest(ac, capsys):
    with pytest.raises(SystemExit) as exc:
        ac.main(["--split", "val"])
    assert exc.value.code == 2 and "--manifest" in capsys.readouterr().err


def test_merge_joins_runs_and_keeps_the_emulated_entry(ac):
    full = result("coronet", "int8", "val", 8.0, {"a.png": (7.9, None, 0.9, None), "b.png": (3.0, None, 0.9, None)})
    pilot = result("coronet", "int8", "val", 8.0, {"a.png": (7.9, 8.1, 0.9, 0.9)})
    merged = ac.merge([full, pilot])
    assert len(merged) == 1 and merged[0]["emulated"] == 1
    assert merged[0]["images"]["a.png"]["arm"]["score"] == 8.1 and "arm" not in merged[0]["images"]["b.png"]
    assert full["images"]["a.png"].get("arm") is None  # the inputs are left as they were
    with pytest.raises(ValueError, match="thresholds differ"):
        ac.merge([full, result("coronet", "int8", "val", 8.5, {"a.png": (7.9, 8.1, 0.9, 0.9)})])
