"""core.publish: a candidate reaches its final path only when published; a rejected one never does."""

import json

import pytest

from edgecxr.core.publish import Candidate, rejected_path


def test_rejected_path_keeps_the_suffix_backends_choose_by():
    assert rejected_path("b/model.int8.onnx").name == "model.int8.rejected.onnx"
    assert rejected_path("b/engines/x-fp16.engine").name == "x-fp16.rejected.engine"


def test_publish_renames_the_candidate_and_its_companions_into_place(tmp_path):
    final = tmp_path / "engines" / "m.engine"
    with Candidate(final, companions=(".json",)) as c:
        assert c.path.parent == final.parent and c.path.suffix == ".engine" and c.path != final
        c.path.write_bytes(b"new")
        c.path.with_name(c.path.name + ".json").write_text("{}")
        assert c.publish() == final
    assert final.read_bytes() == b"new" and (tmp_path / "engines" / "m.engine.json").is_file()
    assert sorted(p.name for p in final.parent.iterdir()) == ["m.engine", "m.engine.json"]


def test_reject_keeps_the_published_file_and_writes_the_note(tmp_path):
    final = tmp_path / "model.int8.onnx"
    final.write_bytes(b"good")
    with Candidate(final) as c:
        c.path.write_bytes(b"bad")
        kept = c.reject(note={"why": "agreement 0.95 < 0.98"})
    assert final.read_bytes() == b"good"
    assert kept == tmp_path / "model.int8.rejected.onnx" and kept.read_bytes() == b"bad"
    note = json.loads((tmp_path / "model.int8.rejected.json").read_text())
    assert note == {"rejected": True, "why": "agreement 0.95 < 0.98"}


def test_an_error_before_the_verdict_leaves_nothing_behind(tmp_path):
    final = tmp_path / "model.onnx"
    with pytest.raises(RuntimeError), Candidate(final, companions=(".json",)) as c:
        c.path.write_bytes(b"half")
        c.path.with_name(c.path.name + ".json").write_text("{}")
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_a_published_file_gets_the_ordinary_mode_not_the_temp_files_private_one(tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        with Candidate(tmp_path / "m.engine") as c:
            c.path.write_bytes(b"x")  # written in place, as the engine build does
            final = c.publish()
    finally:
        os.umask(umask)
    assert stat.S_IMODE(final.stat().st_mode) == 0o644
