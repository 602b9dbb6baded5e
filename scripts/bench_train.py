"""Training throughput (images/s) of the paper-sized models on this machine, float32 vs bf16 mixed precision.

    python scripts/bench_train.py coronet 150 32          # model, input side, batch size
    python scripts/bench_train.py cnn-lstm 128 32 --precision mixed_bfloat16
    python scripts/bench_train.py coronet 150 32 --jit-compile

Times `model.fit` on random data after one warm-up batch (so graph tracing is not counted); the data
pipeline is not part of it (training caches decoded arrays once, see edgecxr.stages.train).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from edgecxr.models import build_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=["coronet", "cnn-lstm"])
    ap.add_argument("size", type=int)
    ap.add_argument("batch", type=int)
    ap.add_argument("--precision", default="float32", choices=["float32", "mixed_bfloat16"])
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--jit-compile", action="store_true", help="compile the train step with XLA")
    args = ap.parse_args()
    keras.config.set_dtype_policy(args.precision)
    model = build_model(args.model, weights=None, input_size=args.size)
    channels = 3 if args.model == "coronet" else 1
    n = args.batch * args.batches
    x = np.random.default_rng(0).random((n, args.size, args.size, channels), dtype=np.float32)
    y = keras.utils.to_categorical(np.arange(n) % 3, model.output_shape[-1])
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="categorical_crossentropy", jit_compile=args.jit_compile)
    model.fit(x[: args.batch], y[: args.batch], batch_size=args.batch, epochs=1, verbose=0)
    t0 = time.perf_counter()
    model.fit(x, y, batch_size=args.batch, epochs=1, verbose=0)
    train = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    model.predict(x, batch_size=args.batch, verbose=0)
    pred = n / (time.perf_counter() - t0)
    xla = " xla" if args.jit_compile else ""
    print(f"{args.model} {args.size}px batch {args.batch} {args.precision}{xla}: train {train:.1f} img/s, predict {pred:.1f} img/s")


if __name__ == "__main__":
    main()
