"""The large OOD set (stages/confidence/ood_large): sized, deterministic, and FIT / REPORT share nothing."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from edgecxr.stages.confidence import ood_large

PER_KIND = 10  # the report uses 200; the rules are the same at any size


@pytest.fixture(scope="module")
def halves() -> dict[str, list]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's warnings about its own malformed test files
        return {h: ood_large.build(h, PER_KIND) for h in ood_large.HALVES}


def test_every_kind_is_in_both_halves_at_the_size_asked(halves):
    for items in halves.values():
        counts = {k: sum(it.kind == k for it in items) for k in ood_large.KINDS}
        assert counts == dict.fromkeys(ood_large.KINDS, PER_KIND)
        for it in items:  # decoded images as the runtime would get them
            assert it.image.ndim in (2, 3) and min(it.image.shape[:2]) >= 16 and it.source


def test_the_halves_share_no_source_and_no_picture(halves):
    fit, report = halves["fit"], halves["report"]
    for kind in ood_large.KINDS:
        a = {it.source for it in fit if it.kind == kind}
        b = {it.source for it in report if it.kind == kind}
        assert a and b and not a & b, kind
    assert not {ood_large.digest(it.image) for it in fit} & {ood_large.digest(it.image) for it in report}


def test_dicom_sources_group_encodings_of_one_picture_and_split_by_file():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sources = ood_large.dicom_sources()
    names = {name: members for _, name, members in sources}
    assert len(names["MR_small.dcm"]) >= 5  # MR_small in several transfer syntaxes: one source
    assert all(m not in {"CR", "DX", "DR"} for m, _, _ in sources)
    multi = [members for _, name, members in sources if any("[" in n for n, _ in members)]
    assert multi and max(len(m) for m in multi) >= 30  # every frame of the 30-frame ultrasound


def test_the_set_is_deterministic(halves):
    again = ood_large.build("report", PER_KIND, kinds=("text", "picture", "noise"))
    mine = [it for it in halves["report"] if it.kind in ("noise", "text", "picture")]
    assert [ood_large.digest(a.image) for a in again] == [ood_large.digest(b.image) for b in mine]


def test_film_transforms_use_val_for_fit_and_test_for_report():
    from pathlib import Path

    from edgecxr.stages.confidence.ood_set import TRANSFORM_KINDS

    film = Path(__file__).resolve().parents[2] / "examples/images/normal/kermany_IM-0122-0001.png"
    fit = list(ood_large.film_transforms([SimpleNamespace(path=film)], "fit"))
    report = list(ood_large.film_transforms([SimpleNamespace(path=film)], "report"))
    assert [it.kind for it in fit] == list(TRANSFORM_KINDS) and fit[0].name.startswith("val-")
    assert report[0].name.startswith("test-") and np.array_equal(fit[1].image, report[1].image)
