"""Build every wheel a user installs into one folder (`make dist`), then check what each holds.

    python packaging/build_dist.py [--out dist]

Writes edgecxr-<v>-py3-none-any.whl (code, build profiles; no weights) and one
edgecxr_model_<name>-<v>-py3-none-any.whl per folder in edgecxr/reference/ (`pip install dist/*.whl`
installs them all; `pip install 'edgecxr[models]'` pulls them from an index). Why split: the
reference weights are 150 MB, and package indexes refuse a file over 100 MiB by default.

Offline and clean: pip wheel --no-deps --no-build-isolation --no-index with this interpreter's
setuptools, and every build keeps its intermediate files (build/, *.egg-info) in a temporary folder
(DIST_EXTRA_CONFIG), never in the checkout, where a stale build/lib would ship files since deleted.

The checks are the promises users rely on: each wheel at most 100 MiB; the edgecxr wheel holds
exactly setup.py's rule (every file under edgecxr/ but caches and model bundles, plus the build
profiles); each model wheel holds exactly its folder's files; the `models` extra names exactly the
model wheels built. Exit 1 with one line per broken promise.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from email.parser import Parser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "edgecxr" / "reference"
PROFILES = REPO / "build_engines"
MODEL_SETUP = Path(__file__).resolve().parent / "model_setup.py"
MAX_WHEEL_BYTES = 100 * 1024 * 1024  #: PyPI's default per-file limit
MAIN = "edgecxr"


def version() -> str:
    """The checkout's version, read from its one home without importing whatever edgecxr is installed."""
    tree = ast.parse((REPO / "edgecxr" / "core" / "version.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets):
            return ast.literal_eval(node.value)
    raise SystemExit("edgecxr/core/version.py has no __version__")


def model_folders() -> list[Path]:
    """Every reference model: each folder in edgecxr/reference/ that holds a bundle.json."""
    return sorted(d for d in REFERENCE.iterdir() if d.is_dir() and (d / "bundle.json").is_file())


def main_wheel_files() -> set[str]:
    """What the edgecxr wheel must hold, by setup.py's rule: every file under edgecxr/ but caches and
    model bundles, and build_engines/ as edgecxr/profiles/."""
    bundles = {f.resolve() for f in model_folders()}
    files = {p.relative_to(REPO).as_posix() for p in (REPO / "edgecxr").rglob("*")
             if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
             and not bundles.intersection(p.resolve().parents)}
    return files | {f"edgecxr/profiles/{p.name}" for p in PROFILES.iterdir() if p.is_file()}


def model_dist(name: str) -> str:
    return f"edgecxr-model-{name}"


def wheel_name(dist: str, ver: str) -> str:
    return f"{dist.replace('-', '_')}-{ver}-py3-none-any.whl"


def _model_project(folder: Path, ver: str, where: Path) -> Path:
    """A throwaway project whose package folder is a link to the model's folder (no copy)."""
    project = where / f"model-{folder.name}"
    (project / "edgecxr" / "reference").mkdir(parents=True)
    (project / "edgecxr" / "reference" / folder.name).symlink_to(folder, target_is_directory=True)
    shutil.copyfile(MODEL_SETUP, project / "setup.py")
    (project / "model.json").write_text(json.dumps({"name": folder.name, "version": ver}), encoding="utf-8")
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n', encoding="utf-8")
    return project


def _start_wheel(project: Path, out: Path, scratch: Path) -> subprocess.Popen:
    scratch.mkdir(parents=True)
    cfg = scratch / "setup.cfg"
    cfg.write_text(f"[build]\nbuild_base = {scratch / 'build'}\n[egg_info]\negg_base = {scratch}\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
           "--wheel-dir", str(out), str(project)]
    env = {**os.environ, "DIST_EXTRA_CONFIG": str(cfg), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    return subprocess.Popen(cmd, cwd=scratch, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def build(out: Path) -> list[Path]:
    """Build all wheels into `out` (earlier edgecxr wheels there are removed first, so that
    `pip install out/*.whl` never sees two versions). The builds run side by side."""
    ver = version()
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("edgecxr-*.whl"), *out.glob("edgecxr_model_*.whl")]:
        old.unlink()
    with tempfile.TemporaryDirectory(prefix="edgecxr-dist-") as tmp:
        where = Path(tmp)
        projects = {MAIN: REPO}
        for folder in model_folders():
            projects[model_dist(folder.name)] = _model_project(folder, ver, where)
        running = {dist: _start_wheel(p, out, where / "scratch" / dist) for dist, p in projects.items()}
        failed = []
        for dist, proc in running.items():
            log, _ = proc.communicate()
            if proc.returncode != 0:
                failed.append(f"{dist}: pip wheel failed (exit {proc.returncode}):\n{log.strip()}")
        if failed:
            raise SystemExit("\n".join(failed))
    return [out / wheel_name(dist, ver) for dist in projects]


def _extra_requires(metadata: str, extra: str) -> set[str]:
    """Distribution names the wheel's METADATA requires for `extra`."""
    reqs = Parser().parsestr(metadata).get_all("Requires-Dist") or []
    return {re.match(r"[A-Za-z0-9._-]+", r).group(0) for r in reqs if f'extra == "{extra}"' in r.replace("'", '"')}


def check(wheels: list[Path]) -> list[str]:
    """Broken promises, one line each (empty: all kept)."""
    problems = []
    for whl in wheels:
        if not whl.is_file():
            problems.append(f"{whl.name}: not built")
        elif whl.stat().st_size > MAX_WHEEL_BYTES:
            problems.append(f"{whl.name}: {whl.stat().st_size / 2**20:.1f} MiB, over the 100 MiB per-file limit")
    if problems:
        return problems
    main, models = wheels[0], wheels[1:]
    with zipfile.ZipFile(main) as zf:
        held = {n for n in zf.namelist() if not n.startswith(f"{MAIN}-")}  # less its .dist-info
        meta = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = zf.read(meta[0]).decode() if meta else ""
    want = main_wheel_files()
    weights = sorted(n for n in held if any(n.startswith(f"edgecxr/reference/{f.name}/") for f in model_folders()))
    if weights:
        problems.append(f"{main.name}: holds model bundle files ({', '.join(weights[:3])}); they belong in the model wheels")
    if held - want - set(weights):
        problems.append(f"{main.name}: holds files outside the rule: {sorted(held - want - set(weights))[:5]}")
    if want - held:
        problems.append(f"{main.name}: misses {sorted(want - held)[:5]}")
    built = {model_dist(f.name) for f in model_folders()}
    listed = _extra_requires(metadata, "models")
    if listed != built:
        problems.append(f"pyproject.toml's `models` extra names {sorted(listed)}, but the model wheels are {sorted(built)}")
    for whl, folder in zip(models, model_folders(), strict=True):
        prefix = f"edgecxr/reference/{folder.name}/"
        with zipfile.ZipFile(whl) as zf:
            held = {i.filename[len(prefix):]: i.file_size for i in zf.infolist() if i.filename.startswith(prefix)}
        want = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()}
        if held != want:
            problems.append(f"{whl.name}: holds {sorted(held)}, but {folder.relative_to(REPO)} has {sorted(want)}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="folder for the wheels (default: dist/)")
    args = parser.parse_args(argv)
    wheels = build(args.out.resolve())
    problems = check(wheels)
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    if problems:
        return 1
    for whl in wheels:
        print(f"{whl.stat().st_size / 2**20:7.1f} MiB  {whl}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
