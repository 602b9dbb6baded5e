"""Outputs never destroy data: no output option writes onto an input, a bundle's files or through a link;
replaced files keep their mode; any file name survives the table and the CSV; killed runs' temp files go."""

from __future__ import annotations

import csv
import io
import os
import shutil
import stat
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from runtime import tinymodels

from edgecxr.cli import main
from edgecxr.cli.output import output_problem, printable
from edgecxr.core.fileutil import atomic_write_bytes, atomic_write_text, sha256_file
from edgecxr.core.lock import bundle_lock
from edgecxr.core.publish import Candidate, sweep_stale
from edgecxr.runtime.results import predictions_table


@pytest.fixture
def bundle(tmp_path):
    return tinymodels.make_bundle(tmp_path / "bundle", int8=False, fp16=False)


@pytest.fixture(scope="module")
def image():
    found = tinymodels.real_images(1)
    if not found:
        pytest.skip("no real X-ray images available")
    return found[0]


def _snapshot(*paths: Path) -> dict[Path, tuple]:
    out = {}
    for p in paths:
        st = os.lstat(p)
        data = os.readlink(p) if stat.S_ISLNK(st.st_mode) else sha256_file(p)
        out[p] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), data)
    return out


def _error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


# -- atomic writes keep the mode -------------------------------------------------------------------
def test_a_private_file_stays_private_when_replaced(tmp_path):
    path = tmp_path / "report.csv"
    path.write_text("old")
    path.chmod(0o600)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o640)
    atomic_write_bytes(path, b"newer")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_new_file_gets_the_umask_mode(tmp_path):
    umask = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "new.json", "{}")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o640


def test_a_published_model_keeps_the_mode_of_the_one_it_replaces(tmp_path):
    final = tmp_path / "model.int8.onnx"
    final.write_bytes(b"old")
    final.chmod(0o600)
    with Candidate(final) as c:
        c.path.write_bytes(b"new")
        c.publish()
    assert final.read_bytes() == b"new" and stat.S_IMODE(final.stat().st_mode) == 0o600


# -- the one rule --------------------------------------------------------------------------------
def test_output_problem_rules(tmp_path, bundle):
    data = tmp_path / "data.csv"
    data.write_text("a\n")
    assert output_problem(tmp_path / "new.csv") is None
    assert output_problem(data) is None  # an old output of the same kind may be replaced
    assert "input" in output_problem(data, inputs=[data])
    os.link(data, tmp_path / "hard.csv")
    assert "input" in output_problem(tmp_path / "hard.csv", inputs=[data])  # the same file under another name
    assert "input" in output_problem(tmp_path / "." / "data.csv", inputs=[str(data)])
    (tmp_path / "link.csv").symlink_to(tmp_path / "missing.csv")
    assert "symbolic link" in output_problem(tmp_path / "link.csv")  # a dangling link too
    assert "folder" in output_problem(tmp_path)
    os.mkfifo(tmp_path / "fifo")
    assert "regular file" in output_problem(tmp_path / "fifo")
    assert "model bundle" in output_problem(bundle.dir / "bundle.json")
    assert "model bundle" in output_problem(bundle.dir / "model.onnx")
    (bundle.dir / "verify.json").write_text("{}")
    assert "model bundle" in output_problem(bundle.dir / "verify.json")
    (bundle.dir / "engines").mkdir()
    (bundle.dir / "engines" / "x.engine").write_bytes(b"e")
    (bundle.dir / "engines" / "x.engine.json").write_text("{}")
    assert "model bundle" in output_problem(bundle.dir / "engines" / "x.engine.json")
    assert output_problem(bundle.dir / "engines" / "x.engine", replaces=(".engine",)) is None  # build rebuilds it
    assert output_problem(bundle.dir / "predictions.csv") is None  # a new file in a bundle is fine
    (tmp_path / "other.onnx").write_bytes(b"m")
    assert "model file" in output_problem(tmp_path / "other.onnx")
    (tmp_path / "scan.png").write_bytes(b"p")
    assert "image" in output_problem(tmp_path / "scan.png")


# -- every output option, through the CLI -------------------------------------------------------------
def test_infer_csv_refuses_inputs_bundle_files_models_and_links(tmp_path, bundle, image):
    scan = tmp_path / "scan.png"
    shutil.copyfile(image, scan)
    link = tmp_path / "preds.csv"
    target = tmp_path / "elsewhere.csv"
    target.write_text("keep me\n")
    link.symlink_to(target)
    protected = [scan, bundle.dir / "bundle.json", bundle.dir / "model.onnx", link, target]
    before = _snapshot(*protected)
    for out in (scan, bundle.dir / "bundle.json", bundle.dir / "model.onnx", link):
        result = CliRunner().invoke(main, ["infer", "-m", str(bundle.dir), str(scan), "--csv", str(out)])
        assert result.exit_code == 2, (out, result.output)
        lines = _error_lines(result)
        assert len(lines) == 1 and "--csv" in lines[0] and str(out) in lines[0], result.stderr
        assert "using backend" not in result.stderr  # refused before the model loaded
    assert _snapshot(*protected) == before


def test_infer_csv_refuses_an_input_reached_through_a_folder(tmp_path, bundle, image):
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copyfile(image, folder / "a.png")
    result = CliRunner().invoke(main, ["infer", "-m", str(bundle.dir), str(folder), "--csv", str(folder / "a.png")])
    assert result.exit_code == 2 and "input of this command" in result.stderr
    assert sha256_file(folder / "a.png") == sha256_file(image)


def test_infer_csv_keeps_a_private_csv_private(tmp_path, bundle, image):
    out = tmp_path / "preds.csv"
    out.write_text("old\n")
    out.chmod(0o600)
    result = CliRunner().invoke(main, ["infer", "-m", str(bundle.dir), str(image), "--csv", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("source,") and stat.S_IMODE(out.stat().st_mode) == 0o600


def test_bench_out_refuses_its_image_and_the_bundle(tmp_path, bundle, image):
    scan = tmp_path / "scan.png"
    shutil.copyfile(image, scan)
    before = _snapshot(scan, bundle.dir / "bundle.json")
    for out in (scan, bundle.dir / "bundle.json"):
        result = CliRunner().invoke(main, ["bench", "-m", str(bundle.dir), "--iterations", "1", "--warmup-s", "0",
                                           "--image", str(scan), "--out", str(out)])
        assert result.exit_code == 2 and "--out" in _error_lines(result)[0], result.output
    assert _snapshot(scan, bundle.dir / "bundle.json") == before


def test_build_out_refuses_bundle_files_and_names_that_are_not_engines(tmp_path, bundle):
    manifest = tmp_path / "m.csv"
    manifest.write_text("relative_path,label,split,patient_id\n")
    before = _snapshot(bundle.dir / "bundle.json", bundle.dir / "model.onnx", manifest)
    cases = [
        ("must end in .engine or .plan", bundle.dir / "bundle.json"),
        ("must end in .engine or .plan", bundle.dir / "bundle"),  # its sidecar would be bundle.json
        ("must end in .engine or .plan", bundle.dir / "model.onnx"),
    ]
    for needle, out in cases:
        result = CliRunner().invoke(main, ["build", "-m", str(bundle.dir), "--no-verify", "--out", str(out)])
        assert result.exit_code == 2 and needle in result.stderr, (out, result.output)
    (bundle.dir / "x.engine.json").symlink_to(bundle.dir / "bundle.json")
    result = CliRunner().invoke(main, ["build", "-m", str(bundle.dir), "--no-verify", "--out", str(bundle.dir / "x.engine")])
    assert result.exit_code == 2 and "symbolic link" in result.stderr, result.output
    result = CliRunner().invoke(main, ["build", "-m", str(bundle.dir), "--no-verify", "--timing-cache", str(manifest),
                                       "--data", str(manifest)])
    assert result.exit_code == 2 and "--timing-cache" in result.stderr, result.output
    assert _snapshot(bundle.dir / "bundle.json", bundle.dir / "model.onnx", manifest) == before


@pytest.mark.parametrize("batch", ["abc", "8-1", "0", "1-2-3-4", "1-300"])
def test_build_bad_batch_is_a_usage_error(bundle, batch):
    result = CliRunner().invoke(main, ["build", "-m", str(bundle.dir), "--batch-size", batch])
    assert result.exit_code == 2, result.output
    assert len(_error_lines(result)) == 1 and "--batch-size" in result.stderr


def test_build_contradicting_batch_bounds_are_a_usage_error(bundle):
    result = CliRunner().invoke(main, ["build", "-m", str(bundle.dir), "--min-batch", "8", "--max-batch", "2"])
    assert result.exit_code == 2 and "min_batch" in result.stderr, result.output


def test_calibrate_record_out_refuses_the_manifest_and_bundle_json(tmp_path, bundle):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("relative_path,label,split,patient_id\n")
    before = _snapshot(manifest, bundle.dir / "bundle.json")
    for out in (manifest, bundle.dir / "bundle.csv", bundle.dir / "bundle.json"):  # bundle.csv: its record is bundle.json
        result = CliRunner().invoke(main, ["calibrate", "-m", str(bundle.dir), "--data", str(manifest),
                                           "--calib-manifest-out", str(out), "--no-verify"])
        assert result.exit_code == 2 and "--calib-manifest-out" in result.stderr, (out, result.output)
    assert _snapshot(manifest, bundle.dir / "bundle.json") == before


def test_data_prepare_refuses_a_manifest_that_is_a_link(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    target = tmp_path / "precious.csv"
    target.write_text("keep\n")
    (out / "manifest.csv").symlink_to(target)
    result = CliRunner().invoke(main, ["data", "prepare", "--kermany", str(tmp_path), "--out", str(out), "--force"])
    assert result.exit_code == 2 and "symbolic link" in result.stderr, result.output
    assert target.read_text() == "keep\n" and (out / "manifest.csv").is_symlink()


# -- file names the terminal and the CSV must survive ---------------------------------------------------------
def test_printable_escapes_what_would_break_a_line():
    assert printable("plain/name.png") == "plain/name.png"
    assert printable("a\nb.png") == "a\\nb.png"
    assert printable("a\x1b[31mred") == "a\\x1b[31mred"
    assert printable(os.fsdecode(b"caf\xe9.png")) == "caf\\xe9.png"  # Latin-1 bytes, not UTF-8
    assert printable("caf\u00e9.png") == "caf\u00e9.png"


def test_infer_names_that_are_not_utf8_or_hold_a_newline(tmp_path, bundle, image):
    folder = tmp_path / "scans"
    folder.mkdir()
    latin1 = os.fsdecode(os.path.join(os.fsencode(folder), b"caf\xe9.png"))
    newline = str(folder / "two\nlines.png")
    cr = str(folder / "tab\tcr\r.png")  # a lone CR is not quoted by csv's defaults
    for name in (latin1, newline, cr):
        shutil.copyfile(image, name)
    out = tmp_path / "preds.csv"
    result = CliRunner().invoke(main, ["infer", "-m", str(bundle.dir), latin1, newline, cr, "--csv", str(out)])
    assert result.exit_code == 0, result.output
    table = result.stdout.splitlines()
    assert len(table) == 5 and table[-1].startswith("audit: ") and "caf\\xe9.png" in result.stdout and "two\\nlines.png" in result.stdout
    assert "tab\\tcr\\r.png" in result.stdout
    raw = out.read_bytes()
    assert b"caf\xe9.png" in raw  # the exact bytes of the name: the row still names the file
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8", "surrogateescape"))))
    assert [r["source"] for r in rows] == [latin1, newline, cr]
    assert all(Path(r["source"]).is_file() for r in rows)


def test_the_table_escapes_errors_too():
    class Pred:
        ok, source, error, label = False, "x\ny.png", "bad\rfile", None

    text = predictions_table([Pred()])
    assert len(text.splitlines()) == 2 and "x\\ny.png" in text and "bad\\rfile" in text


# -- what a killed run leaves behind ---------------------------------------------------------------------
def _stale(folder: Path, name: str, age_s: float = 60) -> Path:
    path = folder / name
    path.write_bytes(b"half")
    old = time.time() - age_s
    os.utime(path, (old, old))
    return path


def test_stale_candidates_are_swept_under_the_bundle_lock(bundle):
    stale = [
        _stale(bundle.dir, ".model.int8.k3j_x9a2.candidate.onnx"),
        _stale(bundle.dir, ".bundle.json.ab12cd34.tmp"),
    ]
    (bundle.dir / "engines").mkdir()
    stale.append(_stale(bundle.dir / "engines", ".m-fp16.q1w2e3r4.candidate.engine"))
    stale.append(_stale(bundle.dir / "engines", ".m-fp16.q1w2e3r4.candidate.engine.json"))
    keep = [_stale(bundle.dir, "notes.tmp"), _stale(bundle.dir, ".hidden")]
    with Candidate(bundle.dir / "model.int8.onnx"):  # no lock: nothing is removed (another run may own them)
        pass
    assert all(p.exists() for p in stale)
    with bundle_lock(bundle.dir, timeout=0):
        fresh = _stale(bundle.dir, ".model.fp16.zzzzzzzz.candidate.onnx", age_s=-60)  # written after the lock
        with Candidate(bundle.dir / "model.int8.onnx") as c, Candidate(bundle.dir / "engines" / "m-fp16.engine") as e:
            assert c.path.exists() and e.path.exists()  # an open candidate of this process is never swept
            assert sweep_stale(bundle.dir) == []
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in keep) and fresh.exists()
