"""The orientation gate: is this film upright, and if not, what was done to it?

Why a model of its own: the classifiers answer a film turned 180 degrees as confidently as an
upright one (CoroNet said `pneumonia_viral 0.752` for a turned film whose upright self is
`normal`), their OOD scores barely notice (docs/SAFETY.md), and the pixel rules in
`input_checks` cannot tell up from down. A tiny CNN that looks at a 64 x 64 gray copy of the
film can: it was trained self-supervised (stages/orientation) on the `train` X-rays, every
transform of an upright film being a labelled example, so it needs no data beyond the
classifier's own and does not depend on the classifier (one gate for every model and backend).

It predicts one of 16 classes: the 8 ways to lay a film on a light box (4 rotations, each
possibly mirrored top-bottom) times positive or negative. `TRANSFORMS` is the one table of
them: what was done to the upright film, the reason an input so laid out is refused, and how to
undo it. The gate runs on the decoded image, before the classifier's preprocessing, in
`inputs.prepare` (so in every path that classifies: `Classifier.predict`, `infer`, `serve`,
`listen`, `watch`, on every backend); `InputRules.orientation` says what to do with a film that
is not upright: "reject" (the default: status `rejected` with the reason), "fix" (turn it
upright, classify it, and say so in `Prediction.orientation`), or "off".

The model is shipped as ONNX (`edgecxr/reference/orientation/gate.onnx`, run with ONNX Runtime on
one thread, no TensorFlow) with a JSON sidecar (`gate.json`: sha256, input size, classes, the
threshold and what it caught on `val`- and `test`-derived films). A film counts as upright when
the model's probability of the upright class (with its left-right mirror image, see `grouped`)
is at least the sidecar's `threshold`.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.core.errors import BundleError

#: where the shipped gate lives (package data: every file under edgecxr/reference/ ships)
GATE_DIR = Path(__file__).resolve().parent.parent / "reference" / "orientation"
GATE_ONNX = "gate.onnx"
GATE_JSON = "gate.json"
#: what `InputRules.orientation` may say
MODES = ("reject", "fix", "off")


@dataclass(frozen=True)
class Transform:
    """One way an upright film can have been laid out: flip top-bottom (first), then turn, then negate.

    `turns` counts quarter turns anticlockwise (`np.rot90(image, turns)`).
    """

    turns: int
    flip: bool
    negative: bool

    @property
    def name(self) -> str:
        """Class name in the sidecar: 'upright', 'rot90', 'flip+rot180', 'neg+flip', ..."""
        parts = (["neg"] if self.negative else []) + (["flip"] if self.flip else [])
        if self.turns:
            parts.append(f"rot{90 * self.turns}")
        return "+".join(parts) or "upright"

    @property
    def upright(self) -> bool:
        return not (self.turns or self.flip or self.negative)

    @property
    def reason(self) -> str:
        """What a reader of the rejection is told: 'turned 180 degrees', 'a negative, flipped top-bottom'."""
        geometry = {
            (0, False): None,
            (1, False): "turned 90 degrees anticlockwise",
            (2, False): "turned 180 degrees",
            (3, False): "turned 90 degrees clockwise",
            (0, True): "flipped top-bottom",
            (2, True): "flipped left-right",
            (1, True): "mirrored and turned on its side (transposed across the anti-diagonal)",
            (3, True): "mirrored and turned on its side (transposed)",
        }[(self.turns % 4, self.flip)]
        parts = (["a negative (inverted)"] if self.negative else []) + ([geometry] if geometry else [])
        return ", ".join(parts) or "upright"

    @property
    def mirrored(self) -> Transform:
        """This transform of a left-right mirrored film (mirror left-right = flip top-bottom, then turn 180)."""
        return Transform((self.turns + 2) % 4, not self.flip, self.negative)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """This transform of an upright image (HxW or HxWxC, any pixel dtype)."""
        out = np.flipud(image) if self.flip else image
        out = np.rot90(out, self.turns, axes=(0, 1)) if self.turns else out
        out = negate(out) if self.negative else out
        return np.ascontiguousarray(out)

    def undo(self, image: np.ndarray) -> np.ndarray:
        """The upright image this transform was applied to (`undo(apply(x)) == x`)."""
        out = negate(image) if self.negative else image
        out = np.rot90(out, -self.turns, axes=(0, 1)) if self.turns else out
        out = np.flipud(out) if self.flip else out
        return np.ascontiguousarray(out)


#: the 16 classes, in the model's output order (index = 8 * negative + 4 * flip + turns)
TRANSFORMS = tuple(Transform(t, bool(f), bool(n)) for n in (0, 1) for f in (0, 1) for t in range(4))
BY_NAME = {t.name: t for t in TRANSFORMS}
#: index of each transform's left-right mirror image in TRANSFORMS
MIRROR = np.array([TRANSFORMS.index(t.mirrored) for t in TRANSFORMS])


def grouped(probs: np.ndarray, mirror_invariant: bool) -> np.ndarray:
    """Per class, the probability of it or (when `mirror_invariant`) its left-right mirror image.

    Why: a chest's left and right differ far less than its top and bottom (the heart's shadow, the
    aortic knob, the gastric bubble), and some published films are mirrored; a 64 px gate tells a
    mirrored film from an upright one about 97% of the time, not the 99.5% an upright film needs to
    be answered. So a mirror is not a reason to refuse a film: the upright class counts its mirror,
    "turned 180 degrees" counts "flipped top-bottom" (the same picture mirrored), and so on.
    """
    probs = np.asarray(probs, dtype=np.float64)
    return probs + probs[:, MIRROR] if mirror_invariant else probs


def negate(image: np.ndarray) -> np.ndarray:
    """The negative in the image's own dtype and scale: 255 - x, (2^bits - 1) - x for wider
    integers (bits: what the largest value needs, so 12-bit data stays 12-bit), 1 - x for floats in [0, 1]."""
    if image.dtype == np.uint8:
        return 255 - image
    if image.dtype.kind in "ui":
        top = (1 << max(1, int(image.max()).bit_length())) - 1 if image.size else 0
        return (top - image.astype(np.int64)).clip(0, None).astype(image.dtype)
    return (1.0 - image).astype(image.dtype)


def small_gray(image: np.ndarray, size: int) -> np.ndarray:
    """A decoded image as a (size, size) float32 gray copy, stretched to a square, cheaply.

    A film whose short side is at least 4 x `size` is first subsampled by an integer stride to a
    short side of 2-4 x `size` (a 3000 px detector image: INTER_AREA over all its pixels costs
    ~10 ms, the stride ~0.1 ms), then shrunk with INTER_AREA. Training (stages/orientation/data.py)
    made its copies with this same function, so the gate sees what it was trained on.
    """
    import cv2

    from edgecxr.core.spec import to_gray

    gray = np.asarray(to_gray(np.asarray(image)))
    if gray.dtype not in (np.uint8, np.uint16, np.float32):
        gray = gray.astype(np.float32)
    stride = min(gray.shape) // (2 * size)
    if stride >= 2:
        gray = gray[::stride, ::stride]
    h, w = gray.shape
    interp = cv2.INTER_AREA if size * size < h * w else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(gray), (size, size), interpolation=interp).astype(np.float32)


def gate_input(image: np.ndarray, size: int) -> np.ndarray:
    """The gate's input for one decoded image: (size, size, 1) float32, gray, stretched to a square,
    zero mean and unit variance (so exposure and bit depth do not matter, only the picture's layout)."""
    return standardize(small_gray(image, size))[:, :, None]


def standardize(small: np.ndarray) -> np.ndarray:
    """(x - mean) / std over the last two axes, per image (a flat image stays 0)."""
    small = np.asarray(small, dtype=np.float32)
    axes = (-2, -1)
    mean = small.mean(axis=axes, keepdims=True, dtype=np.float64)
    std = small.std(axis=axes, keepdims=True, dtype=np.float64)
    out = (small - mean.astype(np.float32)) / np.maximum(std, 1e-6).astype(np.float32)
    return np.nan_to_num(out, copy=False)


@dataclass(frozen=True)
class Verdict:
    """What the gate says about one film."""

    transform: Transform  # the most likely layout (upright or not)
    p_upright: float  # probability the film is upright (with its mirror image, when the gate is mirror-invariant)
    upright: bool  # p_upright >= the threshold
    confidence: float  # probability of `transform` (with its mirror image, when the gate is mirror-invariant)
    #: the gate's 16 logits (the input of its softmax), for the CXR score (runtime/cxr_score.py); None from `verdicts`
    logits: np.ndarray | None = None

    @property
    def reason(self) -> str:
        if self.upright:
            return "upright"
        return f"{self.transform.reason} (orientation gate: p(upright) {self.p_upright:.2f})"


class OrientationGate:
    """The gate model: an ONNX Runtime session on one thread, plus its sidecar."""

    def __init__(self, onnx_path: str | Path, meta: dict[str, Any]):
        import onnxruntime as ort

        self.path = Path(onnx_path)
        self.meta = meta
        self.size = int(meta["input_size"])
        self.threshold = float(meta["threshold"])
        self.mirror_invariant = bool(meta.get("mirror_invariant", False))
        classes = meta.get("classes")
        if classes != [t.name for t in TRANSFORMS]:
            raise BundleError(f"{self.path}: the gate's classes {classes} are not this edgecxr's {len(TRANSFORMS)} transforms")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        model, self.has_logits = _with_logits(self.path)
        self.session = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0].name

    @classmethod
    def load(cls, folder: str | Path | None = None) -> OrientationGate:
        """The gate in `folder` (default: the shipped one), its sha256 checked against the sidecar."""
        from edgecxr.core.fileutil import sha256_file

        folder = Path(folder) if folder is not None else GATE_DIR
        side, onnx_path = folder / GATE_JSON, folder / GATE_ONNX
        if not side.is_file() or not onnx_path.is_file():
            raise BundleError(f"{folder}: no orientation gate ({GATE_ONNX} and {GATE_JSON}); "
                              "train one with scripts/train_orientation.py, or turn the gate off")
        try:
            meta = json.loads(side.read_text())
        except (OSError, ValueError) as exc:
            raise BundleError(f"{side}: cannot read the gate's sidecar: {exc}") from exc
        if sha256_file(onnx_path) != meta.get("sha256"):
            raise BundleError(f"{onnx_path}: sha256 differs from the one {GATE_JSON} records; refusing to use it")
        return cls(onnx_path, meta)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, 16) for gate inputs (N, size, size, 1)."""
        return self.outputs(batch)[0]

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities, logits) (N, 16) each for gate inputs (N, size, size, 1); logits None when the
        gate's graph does not end in a softmax (then no CXR score can be computed from it)."""
        out = self.session.run(None, {self._input: np.ascontiguousarray(batch, dtype=np.float32)})
        return out[0], (out[1] if self.has_logits else None)

    def verdicts(self, probs: np.ndarray) -> list[Verdict]:
        """One verdict per row of class probabilities: upright or not, and the most likely layout.

        With a mirror-invariant gate the layout is chosen between mirror pairs first (their summed
        probability), then the likelier of the pair names it: "turned 180 degrees" or "flipped
        top-bottom", which differ only by a left-right mirror, so the name of the two is the less
        certain part of the verdict (gate.json records how often it is right).
        """
        raw = np.asarray(probs, dtype=np.float64)
        out = []
        for row, group in zip(raw, grouped(raw, self.mirror_invariant), strict=True):
            p_up = float(group[0])
            upright = p_up >= self.threshold
            candidates = group.copy()
            if not upright:  # the best non-upright layout says why
                candidates[[0, MIRROR[0]] if self.mirror_invariant else [0]] = -1.0
            k = int(np.argmax(candidates))
            if self.mirror_invariant and row[MIRROR[k]] > row[k]:
                k = int(MIRROR[k])
            out.append(Verdict(TRANSFORMS[0] if upright else TRANSFORMS[k], p_up, upright, float(group[k])))
        return out

    def check(self, image: np.ndarray) -> Verdict:
        """The verdict on one decoded image (any size, gray or color, any pixel dtype), with its logits."""
        from dataclasses import replace

        probs, logits = self.outputs(gate_input(image, self.size)[None])
        return replace(self.verdicts(probs)[0], logits=None if logits is None else logits[0])

    def describe(self) -> str:
        return f"orientation gate {self.meta.get('sha256', '')[:12]} ({self.size}x{self.size}, p(upright) >= {self.threshold:g})"


def _with_logits(path: Path) -> tuple[bytes | str, bool]:
    """The gate's ONNX model with the input of its final Softmax (the logits) as a second output, in
    memory (the file, and so its checked sha256, is unchanged); the path as is when there is none."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    last = [n for n in graph.node if graph.output and graph.output[0].name in n.output]
    if len(graph.output) != 1 or not last or last[0].op_type != "Softmax":
        return str(path), False
    graph.output.append(onnx.helper.make_tensor_value_info(last[0].input[0], onnx.TensorProto.FLOAT, None))
    return model.SerializeToString(), True


@functools.lru_cache(maxsize=4)
def _cached(folder: str) -> OrientationGate:
    return OrientationGate.load(folder)


def shipped_gate(folder: str | Path | None = None) -> OrientationGate:
    """The gate, loaded once per process and folder (ONNX Runtime sessions may be shared by threads)."""
    return _cached(str(Path(folder) if folder is not None else GATE_DIR))


def mode_of(rules: Any) -> str:
    """What the gate does under these input rules: "reject", "fix" or "off" (all checks off: off)."""
    mode = rules.orientation if rules.enabled else "off"
    if mode not in MODES:
        raise ValueError(f"unknown orientation mode {mode!r}; choose from {', '.join(MODES)}")
    return mode


def describe(rules: Any) -> str:
    """The audit trail's line for the gate, loading it (so a missing or altered gate fails at load,
    not on the first film): 'reject: orientation gate 1a2b... (64x64, p(upright) >= 0.3)' or 'off'."""
    mode = mode_of(rules)
    return mode if mode == "off" else f"{mode}: {shipped_gate().describe()}"


def timed_check(gate: OrientationGate, image: np.ndarray) -> tuple[float, float]:
    """(ms to make the gate's input, ms of its ONNX run and verdict) for one film, as `check` does it:
    the one timing of the gate that `edgecxr bench` and scripts/orientation_report.py report."""
    t0 = time.perf_counter()
    x = gate_input(image, gate.size)[None]
    t1 = time.perf_counter()
    gate.verdicts(gate.probabilities(x))
    t2 = time.perf_counter()
    return (t1 - t0) * 1e3, (t2 - t1) * 1e3


def synthetic_film() -> np.ndarray:
    """A 2048 x 2048 uint16 image, a large detector's size, for timing what grows with the film."""
    yy, xx = np.mgrid[0:2048, 0:2048]
    return ((np.sin(xx / 37.0) * np.cos(yy / 53.0) + 1) * 20000).astype(np.uint16)


def bench_gate(image: np.ndarray | None = None, iterations: int = 200, warmup_s: float = 0.5,
               folder: str | Path | None = None) -> dict[str, Any]:
    """The gate's cost per film, one at a time, as `inputs.prepare` pays it: its resize of the decoded
    film (`gate_input`) and its ONNX Runtime run; trtexec-style summaries (runtime.timing.summarize).

    `image` None: a synthetic 2048 x 2048 uint16 film (a large detector's size: the resize is the
    part that grows with the film).
    """
    from edgecxr.runtime.timing import summarize

    gate = shipped_gate(folder)
    if image is None:
        image = synthetic_film()
    end = time.perf_counter() + warmup_s
    while time.perf_counter() < end:
        gate.check(image)
    resize, run, total = [], [], []
    for _ in range(iterations):
        r, o = timed_check(gate, image)
        resize.append(r)
        run.append(o)
        total.append(r + o)
    out = {"gate": gate.describe(), "image_size": [int(image.shape[1]), int(image.shape[0])],
           "iterations": iterations, "resize_ms": summarize(resize), "onnx_ms": summarize(run),
           "total_ms": summarize(total)}
    return out
