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
- `text`: rendered pages of random words (OpenCV's Hershey fonts), dark on light or light on dark,
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

from edgecxr.stages.confidence.ood_set import TRANSFORM_KINDS, OodItem, transformed

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
    makers = {"dicom": _dicom, "text": _text, "chart": _chart, "ui": _ui, "picture": _picture,
              "noise": _noise, "blank": _blank}
    items: list[OodItem] = []
    for kind in kinds:
        items += makers[kind](half, per_kind)
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


def _resize(image: np.ndarray, short: int) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    scale = short / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(image), size, interpolation=interp)


def _crop(rng: np.random.Generator, image: np.ndarray, low: float) -> np.ndarray:
    """A random crop of `low`-100% of each side (images under 64 px a side are taken whole)."""
    h, w = image.shape[:2]
    if min(h, w) < 64:
        return image
    ch, cw = int(h * rng.uniform(low, 1.0)), int(w * rng.uniform(low, 1.0))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return image[y : y + ch, x : x + cw]


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
        img = _resize(_crop(rng, img, 0.5), int(rng.integers(128, 513)))
        out.append(OodItem("dicom", f"dicom-{half}-{i}-{modality}-{member}", np.clip(img, 0, 1).astype(np.float32),
                           source=f"pydicom:{source}"))
    return out


# -- text -------------------------------------------------------------------------------------------
_WORDS = ("patient report chest film normal findings impression lungs clear no acute disease heart size "
          "within limits the of and to in is for with on as by at from page date name study series image "
          "total amount invoice order number table figure result value 2026 12 07 0451 mm kV mAs left right "
          "upper lower lobe view PA AP lateral portable supine signed reviewed radiology department").split()


def _text(half: str, n: int) -> list[OodItem]:
    import cv2

    rng = _rng("text", half)
    fonts = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
             cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_COMPLEX_SMALL, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX)
    out = []
    for i in range(n):
        h, w = int(rng.integers(256, 641)), int(rng.integers(256, 641))
        dark_on_light = rng.random() < 0.7
        paper, ink = (int(rng.integers(200, 256)), int(rng.integers(0, 80))) if dark_on_light else \
                     (int(rng.integers(0, 60)), int(rng.integers(170, 256)))
        img = np.full((h, w), paper, np.uint8)
        font, scale = fonts[int(rng.integers(len(fonts)))], float(rng.uniform(0.4, 1.4))
        thick = int(rng.integers(1, 3))
        step = int(28 * scale + rng.integers(6, 20))
        y = int(rng.integers(step, 2 * step))
        while y < h - 8:
            words = rng.choice(_WORDS, int(rng.integers(2, 12)))
            cv2.putText(img, " ".join(words), (int(rng.integers(4, 40)), y), font, scale, ink, thick, cv2.LINE_AA)
            y += step * (2 if rng.random() < 0.1 else 1)
        if rng.random() < 0.4:  # a scanned page: blur and grain
            img = cv2.GaussianBlur(img, (3, 3), 0)
            img = np.clip(img + rng.normal(0, rng.uniform(2, 12), img.shape), 0, 255).astype(np.uint8)
        out.append(OodItem("text", f"text-{half}-{i}", img, source=f"text-{half}-{i}"))
    return out


# -- charts and screenshots (matplotlib, Agg, no pyplot) --------------------------------------------
def _render(fig: Any) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


def _figure(rng: np.random.Generator, dark: bool = False) -> Any:
    from matplotlib.figure import Figure

    w, h = float(rng.uniform(2.6, 6.0)), float(rng.uniform(2.6, 6.0))
    return Figure(figsize=(w, h), dpi=int(rng.integers(50, 91)), facecolor="#202124" if dark else "white")


_CMAPS = ("viridis", "gray", "magma", "coolwarm", "Greys", "bone", "jet", "plasma", "cividis", "RdBu")


#: matplotlib draws ~10 charts a second on one core: each render is seen as this many crops and rescales
VIEWS_PER_RENDER = 5


def _views(rng: np.random.Generator, kind: str, half: str, i: int, img: np.ndarray, label: str) -> list[OodItem]:
    """`VIEWS_PER_RENDER` items of one render: the whole picture, then crops of 60-100% a side, rescaled,
    in colour or gray; all share the render as their source."""
    out = []
    for v in range(VIEWS_PER_RENDER):
        view = img if v == 0 else _resize(_crop(rng, img, 0.6), int(rng.integers(128, 513)))
        if view.ndim == 3 and rng.random() < 0.3:
            view = _gray(view)
        out.append(OodItem(kind, f"{kind}-{half}-{i}.{v}-{label}", np.ascontiguousarray(view), source=f"{kind}-{half}-{i}"))
    return out


def _chart(half: str, n: int) -> list[OodItem]:
    rng = _rng("chart", half)
    styles = ("line", "bar", "scatter", "heatmap", "pie")
    out: list[OodItem] = []
    for i in range(-(-n // VIEWS_PER_RENDER)):
        style = styles[i % len(styles)]
        fig = _figure(rng)
        ax = fig.add_subplot(1, 1, 1)
        k = int(rng.integers(1, 5))
        if style == "line":
            x = np.arange(int(rng.integers(10, 200)))
            for _ in range(k):
                ax.plot(x, np.cumsum(rng.normal(0, 1, x.size)), lw=float(rng.uniform(0.8, 3)))
            ax.grid(rng.random() < 0.5)
        elif style == "bar":
            m = int(rng.integers(3, 15))
            (ax.barh if rng.random() < 0.3 else ax.bar)(np.arange(m), rng.uniform(0, 10, m),
                                                        color=None if rng.random() < 0.5 else "0.4")
        elif style == "scatter":
            m = int(rng.integers(20, 500))
            ax.scatter(rng.normal(0, 1, m), rng.normal(0, 1, m), s=float(rng.uniform(2, 40)),
                       c=rng.random(m) if rng.random() < 0.5 else None)
        elif style == "heatmap":
            import cv2

            small = rng.normal(0, 1, (int(rng.integers(4, 12)),) * 2).astype(np.float32)
            field = small if rng.random() < 0.5 else cv2.resize(small, (40, 40), interpolation=cv2.INTER_CUBIC)
            im = ax.imshow(field, cmap=_CMAPS[int(rng.integers(len(_CMAPS)))])
            if rng.random() < 0.6:
                fig.colorbar(im, ax=ax)
        else:
            m = int(rng.integers(2, 8))
            ax.pie(rng.uniform(1, 10, m), labels=list(rng.choice(_WORDS, m)) if rng.random() < 0.5 else None)
        if style != "pie":  # few ticks: tick labels are most of matplotlib's drawing time
            ax.locator_params(nbins=int(rng.integers(2, 6)))
        if rng.random() < 0.7:
            ax.set_title(" ".join(rng.choice(_WORDS, int(rng.integers(1, 5)))))
        out += _views(rng, "chart", half, i, _render(fig), style)
    return out[:n]


def _gray(rgb: np.ndarray) -> np.ndarray:
    from edgecxr.core.spec import to_gray

    return to_gray(rgb)


def _ui(half: str, n: int) -> list[OodItem]:
    from matplotlib.patches import FancyBboxPatch, Rectangle

    rng = _rng("ui", half)
    out: list[OodItem] = []
    for i in range(-(-n // VIEWS_PER_RENDER)):
        dark = rng.random() < 0.35
        fg, panel = ("#e8eaed", "#303134") if dark else ("#202124", "#f1f3f4")
        fig = _figure(rng, dark)
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        ax.axis("off")
        accent = tuple(rng.uniform(0.1, 0.9, 3))
        ax.add_patch(Rectangle((0, 92), 100, 8, color=accent))  # title bar
        ax.text(2, 95, " ".join(rng.choice(_WORDS, 3)), color="white", fontsize=float(rng.uniform(7, 12)), va="center")
        if rng.random() < 0.6:  # a side bar of menu entries
            ax.add_patch(Rectangle((0, 0), 20, 92, color=panel))
            for j in range(int(rng.integers(4, 10))):
                ax.text(2, 86 - 8 * j, str(rng.choice(_WORDS)), color=fg, fontsize=8)
        for _ in range(int(rng.integers(2, 7))):  # boxes and buttons
            x, y = float(rng.uniform(22, 80)), float(rng.uniform(5, 80))
            bw, bh = float(rng.uniform(8, 30)), float(rng.uniform(4, 12))
            ax.add_patch(FancyBboxPatch((x, y), bw, bh, boxstyle="round,pad=0.5", fc=panel if rng.random() < 0.5 else accent,
                                        ec=fg, lw=0.8))
            ax.text(x + 1, y + bh / 2, str(rng.choice(_WORDS)), color=fg, fontsize=7, va="center")
        if rng.random() < 0.5:  # a table
            rows, cols = int(rng.integers(3, 8)), int(rng.integers(2, 5))
            cells = [[str(rng.choice(_WORDS)) if rng.random() < 0.5 else f"{rng.uniform(0, 999):.1f}"
                      for _ in range(cols)] for _ in range(rows)]
            tab = ax.table(cellText=cells, bbox=(0.25, 0.05, 0.7, 0.4))
            tab.set_fontsize(7)
        if rng.random() < 0.4:  # a small plot inside the window
            inset = fig.add_axes((0.55, 0.5, 0.4, 0.3))
            inset.plot(np.cumsum(rng.normal(0, 1, 50)), color=accent)
        out += _views(rng, "ui", half, i, _render(fig), "dark" if dark else "light")
    return out[:n]


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
        img = _crop(rng, img, 0.3)
        img = _resize(img, int(rng.integers(128, 513)))
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
