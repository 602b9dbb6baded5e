"""A larger out-of-distribution set, built without the network: hundreds per kind, in two halves.

Why: the section-2 set (`ood_set.build`) has 8 items per kind, too few to call anything a detector
of non-X-rays or to set a threshold on; issue 25 asks for hundreds per kind, with thresholds fitted on
one half and numbers reported on another half that shares no source item with it.

Every kind has a FIT half (thresholds and choices may look at it) and a REPORT half (only reported),
and `OodItem.source` names the source item each picture was made from; no source is in both halves
(tests/confidence/test_ood_large.py checks it). Everything is deterministic (seeded by kind and half)
and made in memory from what the installed packages ship; nothing is downloaded or cached.

Kinds, and how many distinct sources underlie them (be careful reading "n = 200": for `dicom` and
`picture` the items are crops and rescales of a few real pictures):

- `dicom`: pydicom's test files (pydicom's wheel, MIT) that are not CR/DX/DR, decoded through
  edgecxr's own DICOM reader (`load_dicom`); every frame of a multi-frame file, decoded with
  pydicom and edgecxr's own gray/color scaling, since the runtime reader refuses multi-frame files.
  Different encodings of one picture (MR_small in 9 transfer syntaxes, the SC_rgb test pattern in
  ~20) are grouped into one source by content (`_group`), and sources alternate between the halves
  within each modality (CT, MR, US, NM, OT, SEG), so each half has different files of most
  modalities. About 25 distinct pictures, 12 of them 16 x 16 px thumbnails (pydicom's DICOMDIR
  tests), upscaled like a viewer would; items are random crops (50-100% a side) rescaled to
  128-512 px.
- `text`, `chart`, `ui` (drawn in `ood_drawn`): rendered pages of random words (OpenCV's Hershey fonts), dark on light or light on dark,
  some with a gray background and scanner noise; every item its own seed.
- `chart`: matplotlib line, bar, scatter, heat map and pie charts with random data, sizes, styles
  and colour maps (some gray), each its own seed.
- `ui`: matplotlib-drawn screenshots: title bars, buttons, boxes, a table, labels, a small plot,
  light and dark themes, each its own seed.
- `picture`: photographs and drawings the installed wheels ship. FIT: matplotlib's
  `grace_hopper.jpg` (photo), `logo2.png` (drawing) and `topobathy.npz` (an elevation map shown
  in gray and in colour). REPORT: pyjpegls' `TEST8.PPM` photo and its channel/subsampled/16-bit
  copies (one scene), matplotlib's `Minduka_Present_Blue_Pack.png` (drawing),
  `jacksboro_fault_dem.npz` (terrain) and `s1045.ima.gz` (an MR slice). So 3 and 4 distinct
  sources; items are crops (30-100% a side), rescales, gray or colour. Nothing else in
  site-packages is an image over 8 KB (matplotlib's toolbar icons are 0.4-3 KB; the matplotlib
  logo is 48 px).
- `noise`: uniform, Gaussian, smooth blobs at several scales, stripes (sine gratings at random
  angles) and mixtures; each item its own seed.
- `blank`: constant frames, linear and radial gradients, with or without faint noise.

The film transforms (turned, flipped, negative) are `ood_set.transformed`: `val` films for FIT,
`test` films for REPORT (`film_transforms`).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.stages.confidence import ood_drawn
from edgecxr.stages.confidence.ood_set import TRANSFORM_KINDS, OodItem, crop, resize_short, transformed

KINDS = ("dicom", "text", "chart", "ui", "picture", "noise", "blank")
HALVES = ("fit", "report")
#: the split whose films make the film-transform kinds of each half
FILM_SPLIT = {"fit": "val", "report": "test"}
#: modalities that are chest radiographs (not OOD)
CXR_MODALITIES = ("CR", "DX", "DR")


def build(half: str, per_kind: int = 200, kinds: Sequence[str] = KINDS) -> list[OodItem]:
    """`per_kind` items of each of `kinds` for one half ("fit" or "report"); deterministic."""
    if half not in HALVES:
        raise ValueError(f"half must be one of {HALVES}, got {half!r}")
    makers = {"dicom": _dicom, "picture": _picture, "noise": _noise, "blank": _blank}
    drawn = {"text": ood_drawn.text, "chart": ood_drawn.chart, "ui": ood_drawn.ui}  # seeded here, drawn there
    items: list[OodItem] = []
    for kind in kinds:
        items += drawn[kind](_rng(kind, half), half, per_kind) if kind in drawn else makers[kind](half, per_kind)
    return items


def film_transforms(records: Sequence[Any], half: str) -> Iterator[OodItem]:
    """The film-transform kinds (rot90, rot180, rot270, flip, negative) of every film of `records`
    (rows of `FILM_SPLIT[half]`: `val` for FIT, `test` for REPORT); the upright film is left out."""
    for item in transformed(records, FILM_SPLIT[half], upright=False):
        item.source = item.name.rsplit("-", 1)[0]
        yield item


def _rng(kind: str, half: str) -> np.random.Generator:
    """One generator per kind and half: the halves never share a seed."""
    return np.random.default_rng([KINDS.index(kind) + 1, HALVES.index(half) + 1, 25])


# -- dicom ------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def dicom_sources() -> list[tuple[str, str, list[tuple[str, np.ndarray]]]]:
    """pydicom's non-CR/DX test pictures as (modality, source name, [(item name, image), ...]), one entry
    per distinct source, sorted by modality and name.

    One source is every frame of one file, and every file whose picture is the same as another's
    (a 16 x 16 standardized copy correlating above 0.95, same aspect within 10%: one picture in
    several transfer syntaxes, lossy or not), so no picture is in both halves.
    """
    frames = list(_dicom_frames())
    keys = [_fingerprint(img) for _, _, img in frames]
    aspect = [img.shape[1] / img.shape[0] for _, _, img in frames]
    parent = list(range(len(frames)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    files = [name.split("[")[0] for _, name, _ in frames]
    for i in range(len(frames)):
        for j in range(i):
            same = files[i] == files[j] or (
                frames[i][0] == frames[j][0] and abs(aspect[i] / aspect[j] - 1) < 0.1
                and float(np.mean(keys[i] * keys[j])) > 0.95)
            if same:
                parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(frames)):
        groups.setdefault(root(i), []).append(i)
    out = [(frames[m[0]][0], files[m[0]], [(frames[i][1], frames[i][2]) for i in m]) for m in groups.values()]
    return sorted(out, key=lambda g: (g[0], g[1]))


def _fingerprint(img: np.ndarray) -> np.ndarray:
    from edgecxr.runtime.orientation import small_gray, standardize

    return standardize(small_gray(img, 16))


def _dicom_frames() -> Iterator[tuple[str, str, np.ndarray]]:
    import warnings

    import pydicom

    from edgecxr.core.errors import ImageLoadError
    from edgecxr.data.dicom import _color_to_unit, _gray_to_unit, load_dicom

    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
                modality = str(ds.get("Modality", "") or "OT").strip().upper() or "OT"
                nframes = int(ds.get("NumberOfFrames", 1) or 1)
        except Exception:  # noqa: BLE001 - not DICOM at all, or a malformed header (rtdose's "1A" frames)
            continue
        if modality in CXR_MODALITIES or "Rows" not in ds:
            continue
        name = str(path.relative_to(folder))
        if nframes == 1:
            try:
                yield modality, name, load_dicom(path)
            except (ImageLoadError, OSError, ValueError):
                continue
            continue
        if min(int(ds.Rows), int(ds.Columns)) < 16:  # load_dicom's smallest side
            continue
        try:
            full = pydicom.dcmread(path)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arr = np.asarray(full.pixel_array)
            photometric = str(full.get("PhotometricInterpretation", "")).strip().upper()
            for i in range(nframes):
                frame = arr[i]
                if frame.ndim == 3:
                    if photometric.startswith("YBR"):
                        from pydicom.pixels import convert_color_space

                        frame = convert_color_space(frame, photometric, "RGB")
                    img = _color_to_unit(path, full, frame)
                else:
                    img = _gray_to_unit(path, full, frame, photometric)
                yield modality, f"{name}[{i}]", img
        except (ImageLoadError, OSError, ValueError, AttributeError, RuntimeError):
            continue


def _dicom(half: str, n: int) -> list[OodItem]:
    """Sources alternate between the halves within each modality (largest pictures first, so each half
    gets full-size pictures of most modalities, not only thumbnails); items go round the modalities,
    then round each modality's sources, as random crops and rescales."""
    rng = _rng("dicom", half)
    by_modality: dict[str, list] = {}
    for modality, name, members in dicom_sources():
        by_modality.setdefault(modality, []).append((name, members))
    flip = 0  # a modality with an odd count gives its extra source to alternating halves
    mine: dict[str, list] = {}
    for modality in sorted(by_modality):
        sources = sorted(by_modality[modality], key=lambda s: (-s[1][0][1].size, s[0]))
        for j, source in enumerate(sources):
            if (j + flip) % 2 == HALVES.index(half):
                mine.setdefault(modality, []).append(source)
        flip += len(sources) % 2
    modalities = sorted(mine)
    out = []
    for i in range(n):
        modality = modalities[i % len(modalities)]
        sources = mine[modality]
        source, members = sources[(i // len(modalities)) % len(sources)]
        member, img = members[int(rng.integers(len(members)))]
        img = resize_short(crop(rng, img, 0.5), int(rng.integers(128, 513)))
        out.append(OodItem("dicom", f"dicom-{half}-{i}-{modality}-{member}", np.clip(img, 0, 1).astype(np.float32),
                           source=f"pydicom:{source}"))
    return out


# -- pictures the wheels ship -----------------------------------------------------------------------
def picture_sources(half: str) -> list[tuple[str, np.ndarray]]:
    """(source name, image) for one half; see the module docstring for which file goes where."""
    import cv2
    import matplotlib

    sample = Path(matplotlib.get_data_path()) / "sample_data"
    out: list[tuple[str, np.ndarray]] = []

    def read(path: Path, name: str) -> None:
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED) if path.is_file() else None
        if img is None:
            return
        if img.ndim == 3:
            img = cv2.cvtColor(img[:, :, :3], cv2.COLOR_BGR2RGB)
        out.append((name, img))

    def terrain(values: np.ndarray, name: str) -> None:
        from matplotlib import colormaps

        v = values.astype(np.float32)
        unit = (v - v.min()) / max(float(v.max() - v.min()), 1e-6)
        out.append((name, (unit * 255).astype(np.uint8)))
        out.append((name + ":colour", (colormaps["terrain"](unit)[:, :, :3] * 255).astype(np.uint8)))

    if half == "fit":
        read(sample / "grace_hopper.jpg", "matplotlib:grace_hopper.jpg")
        read(sample / "logo2.png", "matplotlib:logo2.png")
        if (sample / "topobathy.npz").is_file():
            terrain(np.load(sample / "topobathy.npz")["topo"], "matplotlib:topobathy.npz")
        return out
    jls = _jpeg_ls_images()
    for path in jls:
        read(path, f"pyjpegls:{path.name}")
    read(sample / "Minduka_Present_Blue_Pack.png", "matplotlib:Minduka_Present_Blue_Pack.png")
    if (sample / "jacksboro_fault_dem.npz").is_file():
        terrain(np.load(sample / "jacksboro_fault_dem.npz")["elevation"], "matplotlib:jacksboro_fault_dem.npz")
    if (sample / "s1045.ima.gz").is_file():
        mri = np.frombuffer(gzip.decompress((sample / "s1045.ima.gz").read_bytes()), np.uint16)
        if mri.size == 256 * 256:
            out.append(("matplotlib:s1045.ima.gz", mri.reshape(256, 256).copy()))
    return out


def _jpeg_ls_images() -> list[Path]:
    """pyjpegls' JPEG-LS conformance pictures (one scene: colour, its channels, subsampled, 16-bit)."""
    try:
        import jpeg_ls
    except ImportError:
        return []
    folder = Path(jpeg_ls.__file__).parent / "tests" / "jlsimV100"
    return sorted(p for p in folder.glob("TEST*") if p.suffix.upper() in (".PGM", ".PPM"))


def _picture(half: str, n: int) -> list[OodItem]:
    import cv2

    rng = _rng("picture", half)
    sources = picture_sources(half)
    if not sources:
        return []
    out = []
    for i in range(n):
        name, img = sources[i % len(sources)]
        img = crop(rng, img, 0.3)
        img = resize_short(img, int(rng.integers(128, 513)))
        if img.ndim == 3 and rng.random() < 0.5:
            img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        out.append(OodItem("picture", f"picture-{half}-{i}-{name.split(':', 1)[1]}", np.ascontiguousarray(img),
                           source=name.split(":colour")[0]))
    return out


# -- synthetic --------------------------------------------------------------------------------------
def _noise(half: str, n: int) -> list[OodItem]:
    import cv2

    rng = _rng("noise", half)
    out = []
    for i in range(n):
        h, w = int(rng.integers(128, 513)), int(rng.integers(128, 513))
        style = ("uniform", "gaussian", "blobs", "stripes", "mixed")[i % 5]
        if style == "uniform":
            img = rng.uniform(0, 1, (h, w))
        elif style == "gaussian":
            img = rng.normal(0.5, rng.uniform(0.05, 0.3), (h, w))
        elif style in ("blobs", "mixed"):
            cells = int(rng.integers(3, 33))
            small = rng.normal(0, 1, (cells, cells)).astype(np.float32)
            img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
            img = (img - img.min()) / max(float(img.max() - img.min()), 1e-6)
            if style == "mixed":
                img = img + rng.normal(0, rng.uniform(0.02, 0.2), (h, w))
        else:
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            angle, period = float(rng.uniform(0, np.pi)), float(rng.uniform(4, 80))
            img = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
        img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
        out.append(OodItem("noise", f"noise-{half}-{i}-{style}", img, source=f"noise-{half}-{i}"))
    return out


def _blank(half: str, n: int) -> list[OodItem]:
    rng = _rng("blank", half)
    out = []
    for i in range(n):
        h, w = int(rng.integers(128, 513)), int(rng.integers(128, 513))
        style = ("constant", "linear", "radial")[i % 3]
        lo, hi = sorted(rng.uniform(0, 1, 2))
        if style == "constant":
            img = np.full((h, w), lo, np.float64)
        elif style == "linear":
            yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
            angle = float(rng.uniform(0, 2 * np.pi))
            t = xx * np.cos(angle) + yy * np.sin(angle)
            img = lo + (hi - lo) * (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        else:
            yy, xx = np.mgrid[0:h, 0:w]
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            r = np.hypot(yy - cy, xx - cx)
            img = lo + (hi - lo) * r / max(float(r.max()), 1e-6)
        if rng.random() < 0.5:
            img = img + rng.normal(0, rng.uniform(0.002, 0.02), (h, w))
        img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
        out.append(OodItem("blank", f"blank-{half}-{i}-{style}", img, source=f"blank-{half}-{i}"))
    return out


def digest(image: np.ndarray) -> str:
    """sha256 of an item's pixels (shape and dtype included): no picture may be in both halves."""
    h = hashlib.sha256(f"{image.dtype.str}{image.shape}".encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


__all__ = ["FILM_SPLIT", "HALVES", "KINDS", "TRANSFORM_KINDS", "build", "dicom_sources", "digest", "film_transforms",
           "picture_sources"]
