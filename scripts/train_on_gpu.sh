#!/usr/bin/env bash
# Train on a lent GPU machine that has PyTorch (or JAX) but no TensorFlow, and bring the model back.
#
# Why: such a machine (the device tool: one H100, Python 3.12 with torch and jax, no network) is lent
# for minutes, gets the working tree and nothing beside it (../shared does not travel), and what
# travels is capped at 64 MiB; what comes back is at most 8 files of 16 MiB, 64 MiB per call. So:
#
#   here   bash scripts/train_on_gpu.sh prepare MODEL [SIZE] [MANIFEST]
#            downloads the wheels the machine lacks (keras, namex, optree; cp312 manylinux x86_64) into
#            .gpu-train/whl/, packs MANIFEST's train+val images at SIZE into .gpu-train/MODEL-SIZE.npz
#            (edgecxr.data.packed: what training would decode, as lossless PNGs), checks that what
#            would travel fits, and prints the device call to make.
#   there  bash scripts/train_on_gpu.sh train MODEL [edgecxr train options]
#            installs the wheels into /tmp/site, trains with KERAS_BACKEND=torch (default; jax works
#            too) from the pack into $RUN_DIR (/tmp/edgecxr-gpu/MODEL: it stays while the machine is
#            warm, and the same call resumes it), stopped after TRAIN_SECONDS (default 450), then
#            tars the bundle (or, when time ran out first, the best checkpoint) into 15 MiB parts and
#            puts train.log, train.jsonl, parts.json and the first 3 parts into $OUT.
#   there  bash scripts/train_on_gpu.sh fetch
#            the next 4 parts into $OUT (call it at once: the machine is given back after ~30 s idle).
#   here   bash scripts/train_on_gpu.sh join DEST DIR...
#            puts the parts from the returned folders together, checks every sha256, unpacks into
#            DEST: a bundle (model.keras, bundle.json, ...) to evaluate and export with TensorFlow.
#
#   here   bash scripts/train_on_gpu.sh slim | unslim
#            the device call sends tracked files, and the shipped model files under edgecxr/reference/
#            (148 MiB) alone are over its 64 MiB: `slim` takes them out of git's index (the files stay
#            on disk, ignored through .git/info/exclude, and a pre-commit hook refuses every commit
#            meanwhile, so their removal cannot be committed by accident); `unslim` puts them back,
#            leaving the index as it was. Training there does not read them.
#
# docs/REPRODUCTION.md "Training on a GPU machine" has the whole sequence and what was tested.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STAGE="${GPU_STAGE:-$REPO/.gpu-train}"     # ignored (.gitignore); the one folder to carry
PART_BYTES="${PART_BYTES:-$((15 * 1024 * 1024))}"  # under the 16 MiB a returned file may have
RUN_DIR="${RUN_DIR:-/tmp/edgecxr-gpu}"     # on the device machine: survives between calls while warm
PYTHON="${PYTHON:-python3}"                # there: the Python with torch; here: .venv
LOCAL_PY="${LOCAL_PY:-$REPO/.venv/bin/python}"

die() { echo "train_on_gpu.sh: $*" >&2; exit 2; }

default_size() { case "$1" in coronet) echo 150 ;; cnn-lstm) echo 224 ;; *) die "unknown model '$1' (coronet or cnn-lstm)" ;; esac; }

prepare() {
    local model="${1:-}" size="${2:-}" manifest="${3:-$REPO/../shared/data/cxr/manifest-extended.csv}"
    [ -n "$model" ] || die "usage: prepare MODEL [SIZE] [MANIFEST]"
    size="${size:-$(default_size "$model")}"
    [ -f "$manifest" ] || die "no manifest at $manifest"
    [ -x "$LOCAL_PY" ] || die "no Python at $LOCAL_PY (make install, or set LOCAL_PY)"
    mkdir -p "$STAGE/whl"
    # The versions this checkout trains and exports with, so the model.keras that comes back loads here.
    local pins
    pins=$("$LOCAL_PY" - <<'EOF'
from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in ("keras", "namex", "optree")))
EOF
)
    rm -f "$STAGE"/whl/*.whl  # one version of each: two stop the install there
    echo "wheels for Python ${PY_VERSION:-3.12} manylinux x86_64: $pins"
    # shellcheck disable=SC2086
    "$LOCAL_PY" -m pip download -q --no-deps --only-binary=:all: --python-version "${PY_VERSION:-3.12}" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$STAGE/whl" $pins
    local pack="$STAGE/$model-$size.npz"
    find "$STAGE" -maxdepth 1 -name '*.npz' ! -path "$pack" -delete  # one pack travels: the one train will use
    if [ -f "$pack" ] && [ "$pack" -nt "$manifest" ]; then
        echo "reusing ${pack#"$REPO"/} (newer than $manifest; delete it to pack again)"
    else
        echo "packing the train and val images of $manifest at ${size}px -> ${pack#"$REPO"/}"
        "$LOCAL_PY" -m edgecxr.data.packed "$manifest" "$pack" --size "$size"
    fi
    "$LOCAL_PY" - "$REPO" "$STAGE" <<'EOF'
# What the device call sends: tracked and untracked-not-ignored files as they are on disk, plus the carry.
import subprocess, sys
from pathlib import Path
repo, stage = Path(sys.argv[1]), Path(sys.argv[2])
names = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                       capture_output=True, check=True).stdout.decode().split("\0")
sizes = {n: (repo / n).stat().st_size for n in names if n and (repo / n).is_file()}
carry = sum(p.stat().st_size for p in stage.rglob("*") if p.is_file())
total, limit = sum(sizes.values()) + carry, 64 * 1024 * 1024
print(f"travels: {sum(sizes.values()) / 2**20:.1f} MiB of working tree + {carry / 2**20:.1f} MiB in .gpu-train "
      f"= {total / 2**20:.1f} MiB (limit 64 MiB)")
if total > limit:
    big = sorted(sizes.items(), key=lambda kv: -kv[1])[:5]
    print("WARNING: over the limit; the device call will be refused. Largest files that travel:\n" +
          "\n".join(f"  {s / 2**20:6.1f} MiB  {n}" for n, s in big) +
          "\n(the shipped ONNX files: 'bash scripts/train_on_gpu.sh slim' takes them out of the index for the "
          "call, 'unslim' puts them back)", file=sys.stderr)
    sys.exit(1)
EOF
    cat <<EOF

Ready. On a session that has a device machine (status: can_start_another true), call its run tool with:
  command: bash scripts/train_on_gpu.sh train $model$([ "$model" = coronet ] && echo " --weights none") --epochs 40
  carry:   [".gpu-train"]
  timeout_s: 560
then, at once, while it is warm, as often as parts.json says parts are left:
  command: bash scripts/train_on_gpu.sh fetch
and here: bash scripts/train_on_gpu.sh join runs/gpu-$model <files_at of each call>
     and, when the device calls are done: bash scripts/train_on_gpu.sh unslim
EOF
}

# The tracked files that make the tree too big to travel: the shipped models' ONNX files.
slim_paths() { git -C "$REPO" ls-files -- 'edgecxr/reference/*/model.*.onnx'; }
SLIM_BEGIN="# edgecxr train_on_gpu.sh slim: begin"
SLIM_END="# edgecxr train_on_gpu.sh slim: end"

# The files slim writes in git's folder (a worktree has its own): the list of paths taken out, the
# ignore file, the hook.
slim_files() {
    git_path() { (cd "$REPO" && realpath -m "$(git rev-parse --git-path "$1")"); }
    marker="$(git_path edgecxr-slim)" exclude="$(git_path info/exclude)" hook="$(git_path hooks)/pre-commit"
}

slim() {
    local marker exclude hook paths
    slim_files
    [ ! -e "$marker" ] || die "already slim ($(wc -l < "$marker") files out of the index); 'unslim' puts them back"
    paths="$(slim_paths)"
    [ -n "$paths" ] || die "no tracked edgecxr/reference/*/model.*.onnx: nothing to take out"
    # Only files identical to HEAD: unslim re-adds what is on disk, which must be what was committed.
    # shellcheck disable=SC2086
    git -C "$REPO" diff --quiet HEAD -- $paths || die "the reference ONNX files differ from HEAD: commit or restore them first"
    [ ! -e "$hook" ] || grep -q "edgecxr-slim" "$hook" || die "$hook exists and is not ours: not replacing it"
    mkdir -p "$(dirname "$exclude")" "$(dirname "$hook")"
    printf '%s\n' "$paths" > "$marker"
    { echo "$SLIM_BEGIN"; sed 's|^|/|' "$marker"; echo "$SLIM_END"; } >> "$exclude"
    cat > "$hook" <<'HOOK'
#!/bin/sh
# installed by scripts/train_on_gpu.sh slim (edgecxr-slim): the reference ONNX files are out of the index
if [ -e "$(git rev-parse --git-path edgecxr-slim)" ]; then
    echo "pre-commit: the checkout is slim for a device call (reference ONNX files out of the index);" \
         "run 'bash scripts/train_on_gpu.sh unslim' before committing" >&2
    exit 1
fi
HOOK
    chmod +x "$hook"
    # shellcheck disable=SC2086
    git -C "$REPO" rm -q --cached -- $paths
    echo "slim: $(wc -l < "$marker") reference ONNX files out of the index (still on disk, ignored);" \
         "commits are refused until 'bash scripts/train_on_gpu.sh unslim'"
}

unslim() {
    local marker exclude hook
    slim_files
    [ -e "$marker" ] || die "not slim: nothing to put back"
    # shellcheck disable=SC2046
    git -C "$REPO" add -f -- $(cat "$marker")
    # shellcheck disable=SC2046
    git -C "$REPO" diff --cached --quiet HEAD -- $(cat "$marker") \
        || echo "unslim: WARNING: the files put back differ from HEAD (changed on disk meanwhile): see git status" >&2
    [ -f "$exclude" ] && sed -i "/^$SLIM_BEGIN\$/,/^$SLIM_END\$/d" "$exclude"
    [ -f "$hook" ] && grep -q "edgecxr-slim" "$hook" && rm -f "$hook"
    echo "unslim: $(wc -l < "$marker") reference ONNX files back in the index"
    rm -f "$marker"
}

install_wheels() {
    local site="${SITE:-/tmp/site}"
    if ! compgen -G "$STAGE/whl/*.whl" >/dev/null; then
        echo "no wheels in $STAGE/whl: using the Python's own packages"
        export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
        return
    fi
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        "$STAGE"/whl/*.whl
    export PYTHONPATH="$site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
}

# Split $1 into parts under $2/parts and write $2/parts.json (names, sizes, sha256 of each and of the whole).
split_parts() {
    local file="$1" dir="$2"
    rm -rf "$dir/parts" && mkdir -p "$dir/parts"
    "$PYTHON" - "$file" "$dir" "$PART_BYTES" <<'EOF'
import hashlib, json, sys
from pathlib import Path
src, dir_, size = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
whole, parts = hashlib.sha256(), []
with open(src, "rb") as fh:
    for i, chunk in enumerate(iter(lambda: fh.read(size), b"")):
        whole.update(chunk)
        name = f"{src.name}.part{i:02d}"
        (dir_ / "parts" / name).write_bytes(chunk)
        parts.append({"name": name, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
info = {"file": src.name, "bytes": src.stat().st_size, "sha256": whole.hexdigest(), "parts": parts}
(dir_ / "parts.json").write_text(json.dumps(info, indent=1))
print(f"{src.name}: {info['bytes'] / 2**20:.1f} MiB in {len(parts)} part(s)")
EOF
}

# Copy the next $2 parts not yet sent from $1/parts into $OUT; say how many are left.
send_parts() {
    local dir="$1" n="$2" sent=0 left=0
    for part in "$dir"/parts/*.part[0-9][0-9]; do
        [ -e "$part" ] || continue
        if [ -e "$part.sent" ]; then continue; fi
        if [ "$sent" -lt "$n" ]; then cp "$part" "$OUT/" && touch "$part.sent" && sent=$((sent + 1)); else left=$((left + 1)); fi
    done
    cp "$dir/parts.json" "$OUT/"
    echo "sent $sent part(s) into \$OUT; $left left$([ "$left" -gt 0 ] && echo ": call 'bash scripts/train_on_gpu.sh fetch' now")"
}

train() {
    local model="${1:-}"
    [ -n "$model" ] || die "usage: train MODEL [edgecxr train options]"
    shift
    : "${OUT:?train runs on the device machine, where OUT is set (or set OUT to a folder to try it here)}"
    local packs=("$STAGE/$model"-*.npz)
    [ -f "${packs[0]}" ] || die "no pack for $model in .gpu-train (run prepare here, and carry .gpu-train)"
    install_wheels
    export KERAS_BACKEND="${KERAS_BACKEND:-torch}" PYTHONUNBUFFERED=1
    local run="$RUN_DIR/$model" status=0
    mkdir -p "$run"
    "$PYTHON" - <<'EOF' | tee "$OUT/machine.txt"
import keras
b = keras.backend.backend()
if b == "torch":
    import torch; gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"; v = torch.__version__
elif b == "jax":
    import jax; gpu = str(jax.devices()[0]); v = jax.__version__
else:
    gpu, v = "?", "?"
print(f"keras {keras.__version__} on {b} {v}: {gpu}")
EOF
    local size="${packs[0]##*-}"
    size="${size%.npz}"
    # --input-size from the pack first: an --input-size among the options, given later, wins (and a
    # size the pack lacks is refused with one line naming the sizes it has)
    timeout --signal=TERM "${TRAIN_SECONDS:-450}" "$PYTHON" -m edgecxr train "$model" --data "${packs[0]}" \
        --input-size "$size" --out "$run" "$@" 2>&1 | tee "$OUT/train.log" || status=$?
    cp "$run/train.jsonl" "$OUT/" 2>/dev/null || true
    local tarball="$RUN_DIR/$model-result.tar"
    if [ -f "$run/bundle.json" ]; then
        tar -C "$run" --exclude=checkpoints --exclude=.bundle.lock -cf "$tarball" .
        echo "finished: the bundle comes back"
    elif [ -f "$run/checkpoints/best.weights.h5" ]; then
        tar -C "$run" -cf "$tarball" train.jsonl checkpoints/state.json checkpoints/best.weights.h5
        echo "not finished (exit $status; TRAIN_SECONDS=${TRAIN_SECONDS:-450}): the best checkpoint comes back;" \
             "the same train call resumes the run while this machine is warm"
    else
        echo "no epoch finished (exit $status): nothing to bring back but the log" >&2
        exit 1
    fi
    split_parts "$tarball" "$RUN_DIR"
    send_parts "$RUN_DIR" 3
}

fetch() {
    : "${OUT:?fetch runs on the device machine, where OUT is set}"
    [ -f "$RUN_DIR/parts.json" ] || die "nothing to fetch in $RUN_DIR (a fresh machine: the run was lost)"
    send_parts "$RUN_DIR" 4
}

join_parts() {
    local dest="${1:-}"
    [ -n "$dest" ] && [ "$#" -ge 2 ] || die "usage: join DEST DIR... (the folders the train and fetch calls returned)"
    shift
    [ ! -e "$dest/bundle.json" ] || die "$dest already holds a bundle"
    mkdir -p "$dest"
    "$LOCAL_PY" - "$dest" "$@" <<'EOF'
import hashlib, json, sys, tarfile
from pathlib import Path
dest, dirs = Path(sys.argv[1]), [Path(d) for d in sys.argv[2:]]
found = [d / "parts.json" for d in dirs if (d / "parts.json").is_file()]
if not found:
    sys.exit(f"train_on_gpu.sh: no parts.json in {', '.join(map(str, dirs))} (did the train call finish?)")
info = json.loads(found[0].read_text())
whole = hashlib.sha256()
tar_path = dest / info["file"]
with open(tar_path, "wb") as out:
    for part in info["parts"]:
        found = [d / part["name"] for d in dirs if (d / part["name"]).is_file()]
        if not found:
            sys.exit(f"train_on_gpu.sh: part {part['name']} is missing from {', '.join(map(str, dirs))}")
        data = found[0].read_bytes()
        if hashlib.sha256(data).hexdigest() != part["sha256"]:
            sys.exit(f"train_on_gpu.sh: {found[0]} is damaged (sha256 differs)")
        whole.update(data)
        out.write(data)
if whole.hexdigest() != info["sha256"]:
    sys.exit("train_on_gpu.sh: the joined file's sha256 differs from parts.json")
with tarfile.open(tar_path) as tar:
    tar.extractall(dest, filter="data")
tar_path.unlink()
print(f"{dest}: {', '.join(sorted(p.name for p in dest.iterdir()))}")
EOF
}

cmd="${1:-}"
[ "$#" -gt 0 ] && shift
case "$cmd" in
    prepare) prepare "$@" ;;
    train) train "$@" ;;
    fetch) fetch ;;
    join) join_parts "$@" ;;
    slim) slim ;;
    unslim) unslim ;;
    *) die "usage: $0 prepare MODEL [SIZE] [MANIFEST] | slim | train MODEL [options] | fetch | join DEST DIR... | unslim" ;;
esac
