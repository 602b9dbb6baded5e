"""Initial weights from an exported ONNX file: go on training the shipped model (`--weights reference`).

Why: the shipped reference bundles carry ONNX files, not Keras checkpoints, and they are the only
trained weights that every checkout has. A training run's checkpoints live on the machine that ran
it (`$EDGECXR_RUNS`), and a build machine is not always kept from one session to the next (on
2026-12-07 one was not: two runs' 15 hours went with it). Reading the weights back out of the ONNX
file lets a new run start where the shipped model stands, on any machine, and lets a site fine-tune
the shipped model on its own images.

How the ONNX graph maps back (our own export: tf2onnx names every weight after its Keras layer,
"<model>_1/<layer>_1/..."), per op:
  * Conv (OIHW) -> Conv2D kernel (HWIO) and bias; a depthwise Conv (group = channels) is the first
    half of a SeparableConv2D, the 1x1 Conv after it the pointwise half.
  * BatchNormalization is gone: ONNX Runtime folded it into the convolution before it (scale into the
    kernel, shift into the Conv's bias). The BN layer is set to the identity plus that bias (gamma 1,
    beta = bias, mean 0, variance 1 - epsilon) and frozen (`trainable = False`, so it keeps these
    statistics in training too): a fine-tune with frozen BatchNorm, the usual way to fine-tune.
  * Gemm -> Dense kernel and bias; LSTM (gates i, o, f, c; W, R, Wb + Rb) -> Keras LSTM (i, f, c, o).
Layers Keras names by a counter ("conv2d_4": the residual convolutions of Xception and their BatchNorm)
are matched in the order of that counter, never by name: the number depends on what the exporting
process had built before, and the same name here may be another layer.

Nothing is trusted on names alone: after loading, the Keras model and ONNX Runtime run the same
inputs, and a difference above `TOLERANCE` in probabilities or features refuses the file (FP16 weights
and activations make the two differ by ~1e-3, a wrong mapping by far more).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.core.bundle import Bundle
from edgecxr.core.errors import EdgeCXRError
from edgecxr.core.lazy import require
from edgecxr.stages.train.recipes import dtype_scope

#: `--weights` value that names the shipped reference model of the family being trained
REFERENCE = "reference"
#: max difference between the loaded Keras model and ONNX Runtime (probabilities; features relative to
#: their largest magnitude) on the check inputs
TOLERANCE = 0.02
#: Keras's LSTM gate k (i, f, c, o) is ONNX's gate block LSTM_GATES[k] (ONNX orders them i, o, f, c)
LSTM_GATES = (0, 2, 3, 1)
_LAYER = re.compile(r"^(.*)_1$")  # tf2onnx's scope of a Keras layer: the layer name + "_1"
_COUNTED = re.compile(r"^(.*?)(?:_(\d+))?$")  # "conv2d_4" -> ("conv2d", 4); "conv2d" -> ("conv2d", 0)


def is_onnx_weights(weights: Any) -> bool:
    """Whether a --weights value asks for a warm start from ONNX (an .onnx path or `reference`)."""
    text = str(weights or "")
    return text == REFERENCE or text.lower().endswith(".onnx")


def resolve_onnx(weights: str, model_name: str) -> Path:
    """The ONNX file a --weights value names: `reference` is the shipped bundle's FP16 file."""
    if weights == REFERENCE:
        from edgecxr.runtime.store import REFERENCE_DIR

        try:
            path = Bundle.load(REFERENCE_DIR / model_name).artifact("onnx_fp16")
        except EdgeCXRError as exc:
            raise EdgeCXRError(f"no shipped {model_name} FP16 ONNX to start from ({exc})", params=("weights",)) from exc
    else:
        path = Path(weights)
    if not path.is_file():
        raise EdgeCXRError(f"weights file {path} not found", params=("weights",))
    return path


def _scopes(name: str) -> list[str]:
    """Keras layer names in a tf2onnx tensor or node name ("a_1/block1_conv1_1/Conv2D:0" -> [a, block1_conv1])."""
    return [m.group(1) for part in name.split("/") if (m := _LAYER.match(part))]


def _layer_of(*names: str) -> str:
    """The Keras layer the first name with a layer scope belongs to."""
    for name in names:
        if scopes := _scopes(name):
            return scopes[-1]
    raise EdgeCXRError(f"cannot tell which layer {names[0]!r} belongs to: not an edgecxr export?", params=("weights",))


def read_onnx_weights(path: Path) -> tuple[dict[str, dict[str, np.ndarray]], Any]:
    """Per Keras layer name, its arrays as ONNX holds them (float32), and the loaded ONNX model."""
    onnx = require("onnx", "reading ONNX weights")
    from onnx import numpy_helper

    model = onnx.load(str(path))
    init = {i.name: numpy_helper.to_array(i).astype(np.float32) for i in model.graph.initializer}
    found: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    for node in model.graph.node:
        weights = [i for i in node.input[1:] if i in init]
        if node.op_type == "Conv" and weights:
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            kernel = init[node.input[1]]
            if group > 1:  # depthwise half of a SeparableConv2D: named by its node
                found[_layer_of(node.name)]["depthwise"] = kernel
                continue
            layer = _layer_of(node.input[1], node.name)
            found[layer]["kernel"] = kernel
            if len(node.input) > 2 and node.input[2] in init:
                owner = _layer_of(node.input[2])  # the conv's own bias, or the shift of a BatchNorm folded in
                found[owner]["bias" if owner == layer else "folded"] = init[node.input[2]]
        elif node.op_type == "Gemm" and weights:
            layer = _layer_of(node.input[1], node.name)
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            found[layer]["kernel"] = init[node.input[1]].T if trans_b else init[node.input[1]]
            if len(node.input) > 2 and node.input[2] in init:
                found[layer]["bias"] = init[node.input[2]]
        elif node.op_type == "LSTM":
            found["<lstm>"] = {"W": init[node.input[1]], "R": init[node.input[2]],
                               **({"B": init[node.input[3]]} if len(node.input) > 3 and node.input[3] in init else {})}
    return dict(found), model


def _keras_layers(model: Any) -> list[Any]:
    """Every layer with weights, nested models (Xception) opened, in build order."""
    out: list[Any] = []
    for layer in model.layers:
        if hasattr(layer, "layers"):
            out.extend(_keras_layers(layer))
        elif layer.weights:
            out.append(layer)
    return out


def _auto_named(layer: Any) -> bool:
    """Whether Keras named `layer` by its class and a counter ("conv2d_4", "batch_normalization")."""
    snake = re.sub(r"([a-z])([A-Z])", r"\1_\2", re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", type(layer).__name__)).lower()
    return _COUNTED.match(layer.name).group(1) == snake


def _match_names(onnx_names: list[str], layers: list[Any]) -> dict[str, Any]:
    """ONNX layer name -> Keras layer: by name, but counter-named layers by their order.

    A counter name says how many layers of that class the process had built before, not which one it
    is: "batch_normalization_5" in the exporting process may be "batch_normalization_5" here and yet a
    different layer. So those are matched in counter order on both sides (build order = counter order).
    """
    counted: dict[str, list[Any]] = defaultdict(list)
    by_name: dict[str, Any] = {}
    for layer in layers:
        if _auto_named(layer):
            counted[_COUNTED.match(layer.name).group(1)].append(layer)
        else:
            by_name[layer.name] = layer
    matched = {n: by_name[n] for n in onnx_names if n in by_name}
    onnx_counted: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for n in onnx_names:
        if n not in matched:
            base, count = _COUNTED.match(n).groups()
            onnx_counted[base].append((int(count or 0), n))
    for base, names in onnx_counted.items():
        candidates = counted.get(base, [])
        if len(candidates) != len(names):
            raise EdgeCXRError(f"the ONNX file's layers {sorted(n for _, n in names)} do not match this model's "
                               f"{[c.name for c in candidates]}; was it exported from this architecture?",
                               params=("weights",))
        matched.update({n: layer for (_, n), layer in zip(sorted(names), candidates, strict=True)})
    return matched


def _lstm_weights(arrays: dict[str, np.ndarray], units: int) -> list[np.ndarray]:
    """ONNX LSTM (W [1,4H,in], R [1,4H,H], B [1,8H], gates i o f c) -> Keras (kernel, recurrent, bias; i f c o)."""
    def gates(m: np.ndarray) -> np.ndarray:
        return np.concatenate([m[g * units:(g + 1) * units] for g in LSTM_GATES], axis=0)

    b = arrays.get("B", np.zeros((1, 8 * units), np.float32))[0]
    return [gates(arrays["W"][0]).T, gates(arrays["R"][0]).T, gates(b[: 4 * units] + b[4 * units:])]


def assign(model: Any, arrays: dict[str, dict[str, np.ndarray]]) -> int:
    """Set every weight of `model` from `arrays`; BatchNorm as identity + folded shift, frozen. Returns layers set."""
    keras = require("keras", "loading ONNX weights")
    layers = _keras_layers(model)
    lstm = [layer for layer in layers if isinstance(layer, keras.layers.LSTM)]
    named = [n for n in arrays if n != "<lstm>"]
    matched = _match_names(named, [layer for layer in layers if layer not in lstm])
    done: set[int] = set()
    for name, layer in matched.items():
        try:
            _assign_layer(keras, layer, arrays[name])
        except (KeyError, ValueError) as exc:  # an array missing, or of another shape
            raise EdgeCXRError(f"the ONNX file's weights for {layer.name} do not fit it ({type(exc).__name__}: "
                               f"{exc}); was it exported from this architecture?", params=("weights",)) from exc
        done.add(id(layer))
    for layer in lstm:
        if "<lstm>" not in arrays or len(lstm) != 1:
            raise EdgeCXRError("the ONNX file's LSTM does not match this model's", params=("weights",))
        layer.set_weights(_lstm_weights(arrays["<lstm>"], layer.units))
        done.add(id(layer))
    missing = [layer.name for layer in layers if id(layer) not in done]
    if missing:
        raise EdgeCXRError(f"the ONNX file has no weights for {missing[:5]}{' ...' if len(missing) > 5 else ''}",
                           params=("weights",))
    return len(done)


def _assign_layer(keras: Any, layer: Any, a: dict[str, np.ndarray]) -> None:
    """One layer's weights from its ONNX arrays (KeyError / ValueError when they do not fit)."""
    if isinstance(layer, keras.layers.BatchNormalization):
        n = a["folded"].shape[0]
        values = {"gamma": np.ones(n), "beta": a["folded"], "moving_mean": np.zeros(n),
                  "moving_variance": np.full(n, 1.0 - layer.epsilon)}
        layer.set_weights([values[w.path.split("/")[-1]].astype(np.float32) for w in layer.weights])
        layer.trainable = False
    elif isinstance(layer, keras.layers.SeparableConv2D):
        layer.set_weights([a["depthwise"].transpose(2, 3, 0, 1), a["kernel"].transpose(2, 3, 1, 0),
                           *([a["bias"]] if layer.use_bias else [])])
    elif isinstance(layer, keras.layers.Conv2D):
        layer.set_weights([a["kernel"].transpose(2, 3, 1, 0), *([a["bias"]] if layer.use_bias else [])])
    elif isinstance(layer, keras.layers.Dense):
        layer.set_weights([a["kernel"], a["bias"]])
    else:
        raise EdgeCXRError(f"cannot load a {type(layer).__name__} ({layer.name}) from ONNX", params=("weights",))


def check_against_onnx(model: Any, onnx_model: Any, images: int = 4, seed: int = 0) -> float:
    """How far `model` is from ONNX Runtime on random inputs in [-1, 1] (the spec's range).

    The larger of: max |probability difference|, and the max difference of the features (the input of
    the softmax layer, the ONNX file's "features" output where it has one) relative to their largest
    magnitude. Probabilities alone can hide a wrong mapping (random inputs often saturate the softmax);
    the 256 or 512 features cannot.
    """
    from edgecxr.runtime.onnxrt import session_options

    keras = require("keras", "checking ONNX weights")
    ort = require("onnxruntime", "checking ONNX weights")
    x = np.random.default_rng(seed).uniform(-1, 1, (images, *model.input_shape[1:])).astype(np.float32)
    session = ort.InferenceSession(onnx_model.SerializeToString(), sess_options=session_options(),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs() if o.name in ("probs", "features")]
    want = dict(zip(names, session.run(names, {"image": x}), strict=True))
    probs_layer = model.get_layer("probs")
    probe = keras.Model(model.input, [probs_layer.input, model.output])
    features, probs = (np.asarray(t, dtype=np.float32) for t in probe(x, training=False))
    diff = float(np.max(np.abs(probs - want["probs"])))
    if "features" in want:
        scale = max(float(np.max(np.abs(want["features"]))), 1e-6)
        diff = max(diff, float(np.max(np.abs(features - want["features"]))) / scale)
    return diff


def load_from_onnx(model: Any, weights: str, model_name: str, build_twin: Any) -> dict[str, Any]:
    """Warm-start `model` from the ONNX file `weights` names, checked against ONNX Runtime.

    The weights go first into a float32 twin built by `build_twin(side)` at the ONNX file's own input
    side, which is checked, then copied into `model`. Why a twin: the check must not measure bfloat16
    rounding (`model` may be built for mixed-precision training), and the CNN-LSTM's weights do not depend
    on its input side, so a shipped model of one side can start a run at another.
    """
    path = resolve_onnx(weights, model_name)
    arrays, onnx_model = read_onnx_weights(path)
    side = int(onnx_model.graph.input[0].type.tensor_type.shape.dim[1].dim_value)
    with dtype_scope("float32"):
        twin = build_twin(side)
    layers = assign(twin, arrays)
    diff = check_against_onnx(twin, onnx_model)
    if diff > TOLERANCE:
        raise EdgeCXRError(f"weights read from {path} do not reproduce it (max difference {diff:.3g} > "
                           f"{TOLERANCE}); was it exported from this architecture?", params=("weights",))
    model.set_weights(twin.get_weights())
    for mine, theirs in zip(_keras_layers(model), _keras_layers(twin), strict=True):
        mine.trainable = theirs.trainable
    return {"onnx": str(path), "layers": layers, "max_diff": diff, "side": side}
