"""What users install, run the way they run it (STYLE.md 16, pip's and cibuildwheel's practice).

`make dist`'s wheels (packaging/build_dist.py) go into a fresh venv made from the base interpreter,
outside the checkout, with dependencies from the package index pip is configured with; then the
card's commands run from an empty temporary folder. Not the dev venv nor `--system-site-packages`:
both see the editable checkout, which hides a file missing from a wheel (a hand-written glob list
once left out confidence.npz, and the installed `edgecxr infer image.png` failed).

EDGECXR_TEST_DIST=FOLDER tests the wheels already in FOLDER instead of building them (a CI that
builds once, or a check of older wheels: the single 144 MB wheel of the hand list fails here).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

try:  # Python 3.11+; on 3.10 the API-identical backport (a dependency there)
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "edgecxr" / "reference"
IMAGE = REPO / "examples" / "images" / "normal" / "kermany_IM-0122-0001.png"  # CC BY 4.0, ATTRIBUTION.md
MAX_WHEEL_BYTES = 100 * 1024 * 1024  # PyPI's default per-file limit
PROFILE = "jetson-orin-nano"


class Installed:
    def __init__(self, root: Path, wheels: list[Path], venv: Path, work: Path, env: dict[str, str]):
        self.root, self.wheels, self.venv, self.work, self.env = root, wheels, venv, work, env

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """A command of the installed package, from the empty work folder, as a user types it."""
        return subprocess.run([str(self.venv / "bin" / args[0]), *args[1:]], cwd=self.work, env=self.env,
                              capture_output=True, text=True, timeout=timeout)


def _user_env(root: Path, venv: Path) -> dict[str, str]:
    """The caller's environment minus anything that could reach the checkout or the dev venv; models,
    caches and data folders in the temporary root. HOME stays: pip reads its index settings there."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "VIRTUAL_ENV", "EDGECXR_", "XDG_"))}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", VIRTUAL_ENV=str(venv),
               PYTHONNOUSERSITE="1", EDGECXR_MODELS=str(root / "models"), XDG_CACHE_HOME=str(root / "cache"),
               XDG_DATA_HOME=str(root / "data"), PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def _dependencies() -> list[str]:
    """The runtime dependencies the edgecxr wheel declares (its Requires-Dist comes from this list)."""
    with open(REPO / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["project"]["dependencies"]


def _pip(py: str, args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    """This interpreter's pip installing into the fresh venv (which has no pip of its own)."""
    return subprocess.Popen([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-input", *args],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Iterator[Installed]:
    root = tmp_path_factory.mktemp("wheels")
    venv, work = root / "venv", root / "work"
    work.mkdir()
    given = os.environ.get("EDGECXR_TEST_DIST")
    dist = Path(given) if given else root / "dist"
    building = None if given else subprocess.Popen(
        [sys.executable, str(REPO / "packaging" / "build_dist.py"), "--out", str(dist)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    env = _user_env(root, venv)
    py = str(venv / "bin" / "python")
    # The fresh venv must not see edgecxr before the install: not the checkout, not the dev venv.
    probe = subprocess.run([py, "-c", "import edgecxr"], cwd=work, env=env, capture_output=True, text=True)
    assert probe.returncode != 0, "edgecxr is importable in the fresh venv before installing the wheels"
    # While the wheels build (mostly zlib), the declared dependencies install: the same set pip would
    # resolve from the wheel's metadata, fetched sooner.
    deps = _pip(py, _dependencies(), work, env)
    deps_log, _ = deps.communicate(timeout=900)
    if building is not None:
        log, _ = building.communicate(timeout=900)
        assert building.returncode == 0, f"make dist failed:\n{log}"
    assert deps.returncode == 0, f"pip install {_dependencies()} failed:\n{deps_log[-3000:]}"
    wheels = sorted(dist.glob("*.whl"))
    assert wheels, f"no wheels in {dist}"
    installing = _pip(py, [str(w) for w in wheels], work, env)
    log, _ = installing.communicate(timeout=900)
    install = subprocess.CompletedProcess(installing.args, installing.returncode, log, log)
    assert install.returncode == 0, f"pip install {[w.name for w in wheels]} failed:\n{install.stderr[-3000:]}"
    shutil.copyfile(IMAGE, work / "image.png")
    yield Installed(root, wheels, venv, work, env)
    shutil.rmtree(root, ignore_errors=True)  # ~0.6 GB (venv, wheels); pytest would keep three runs of it


def _site_packages(inst: Installed) -> Path:
    out = subprocess.run([str(inst.venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         cwd=inst.work, env=inst.env, capture_output=True, text=True, check=True)
    return Path(out.stdout.strip()).resolve()


def test_each_wheel_fits_an_index_and_the_code_wheel_holds_no_model_weights(installed):
    for whl in installed.wheels:
        assert whl.stat().st_size <= MAX_WHEEL_BYTES, f"{whl.name}: {whl.stat().st_size / 2**20:.1f} MiB > 100 MiB"
    main = [w for w in installed.wheels if w.name.startswith("edgecxr-")]
    assert len(main) == 1, [w.name for w in installed.wheels]
    with zipfile.ZipFile(main[0]) as zf:
        names = zf.namelist()
    # Model bundles ship as their own wheels; the only ONNX here may be small non-bundle data beside
    # them (the orientation gate every model's input checks use).
    bundles = {d.name for d in REFERENCE.iterdir() if (d / "bundle.json").is_file()}
    assert not [n for n in names if n.startswith(tuple(f"edgecxr/reference/{b}/" for b in bundles))]
    onnx = [n for n in names if n.endswith(".onnx")]
    assert all(Path(n).parent.name not in bundles for n in onnx), onnx
    model_wheels = {w.name.split("-")[0] for w in installed.wheels if w.name.startswith("edgecxr_model_")}
    assert model_wheels == {f"edgecxr_model_{b.replace('-', '_')}" for b in bundles}
    # the build profiles ship from their one home, build_engines/
    for toml in (REPO / "build_engines").glob("*.toml"):
        assert f"edgecxr/profiles/{toml.name}" in names


def test_the_installed_package_is_the_one_that_runs(installed):
    out = subprocess.run([str(installed.venv / "bin" / "python"), "-c", "import edgecxr; print(edgecxr.__file__)"],
                         cwd=installed.work, env=installed.env, capture_output=True, text=True, check=True)
    assert Path(out.stdout.strip()).resolve().is_relative_to(_site_packages(installed))


def test_infer_with_the_default_model(installed):
    """The card's first command, word for word."""
    res = installed.run("edgecxr", "infer", "image.png")
    assert res.returncode == 0, res.stderr
    assert "1 of 1 image(s) classified" in res.stdout + res.stderr
    assert str(_site_packages(installed) / "edgecxr" / "reference" / "coronet") in res.stderr


def test_infer_with_cnn_lstm(installed):
    res = installed.run("edgecxr", "infer", "-m", "cnn-lstm", "image.png", "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["model"] == "cnn-lstm" and report["classified"] == 1
    assert [p["status"] for p in report["predictions"]] == ["ok"]
    artifact = Path(report["audit"]["artifact"])
    assert artifact.is_relative_to(_site_packages(installed) / "edgecxr" / "reference" / "cnn-lstm")
    recorded = json.loads((REFERENCE / "cnn-lstm" / "bundle.json").read_text())
    assert report["audit"]["artifact_sha256"] in recorded["artifact_sha256"].values()


def test_models_lists_the_reference_models(installed):
    res = installed.run("edgecxr", "models", "--json")
    assert res.returncode == 0, res.stderr
    listed = {m["name"]: m["source"] for m in json.loads(res.stdout)["models"]}
    shipped = {d.name for d in REFERENCE.iterdir() if (d / "bundle.json").is_file()}
    assert listed == dict.fromkeys(shipped, "reference")


def test_build_dry_run_finds_a_shipped_profile(installed):
    res = installed.run("edgecxr", "build", "--dry-run", "--profile", PROFILE, "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["ok"] and report["profile"] == PROFILE
    assert Path(report["bundle"]).is_relative_to(_site_packages(installed))


def test_without_the_model_wheels_the_error_names_them(tmp_path, monkeypatch):
    """The edgecxr wheel alone has no reference model: the one-line error says which wheels to add."""
    from edgecxr.core.errors import BundleError
    from edgecxr.runtime import store

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(store, "REFERENCE_DIR", tmp_path / "site-packages" / "edgecxr" / "reference")
    monkeypatch.setenv("EDGECXR_MODELS", str(tmp_path / "models"))
    with pytest.raises(BundleError, match=r"pip install 'edgecxr\[models\]'"):
        store.resolve(None)


def _build_dist_module():
    spec = importlib.util.spec_from_file_location("build_dist", REPO / "packaging" / "build_dist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_wheel(path: Path, files: dict[str, int], metadata: str = "") -> Path:
    """A stand-in wheel: each name holds that many zero bytes (deflated: a 100 MB entry costs 0.1 MB)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, size in sorted(files.items()):
            zf.writestr(name, bytes(size))
        if metadata:
            zf.writestr("edgecxr-0.1.0.dist-info/METADATA", metadata)
    return path


def test_make_dist_refuses_wheels_that_break_a_promise(tmp_path):
    """build_dist.check, on small stand-ins for the wheels: the rule's file lists, with one file
    missing from a model wheel (confidence.npz, as the hand list once did), a bundle file in the code
    wheel, an extra that does not name the model wheels, and a wheel over 100 MiB."""
    bd = _build_dist_module()
    folders = bd.model_folders()
    extra = "".join(f'Requires-Dist: {bd.model_dist(f.name)}; extra == "models"\n' for f in folders)

    def model_wheels(drop: str = "") -> list[Path]:
        out = []
        for f in folders:
            files = {f"edgecxr/reference/{f.name}/{p.name}": p.stat().st_size
                     for p in f.iterdir() if p.is_file() and p.name != drop}
            out.append(_fake_wheel(tmp_path / bd.wheel_name(bd.model_dist(f.name), "0.1.0"), files))
        return out

    def main_wheel(names: set[str], metadata: str = extra) -> Path:
        return _fake_wheel(tmp_path / "edgecxr-0.1.0-py3-none-any.whl", dict.fromkeys(names, 0), metadata)

    models = model_wheels()
    assert bd.check([main_wheel(bd.main_wheel_files()), *models]) == []
    bundle_file = f"edgecxr/reference/{folders[0].name}/bundle.json"
    problems = bd.check([main_wheel(bd.main_wheel_files() | {bundle_file}), *models])
    assert any("holds model bundle files" in p for p in problems), problems
    problems = bd.check([main_wheel(bd.main_wheel_files() - {"edgecxr/py.typed"}), *models])
    assert any("misses ['edgecxr/py.typed']" in p for p in problems), problems
    problems = bd.check([main_wheel(bd.main_wheel_files(), "Name: edgecxr\n"), *models])
    assert any("`models` extra" in p for p in problems), problems
    with open(models[0], "r+b") as fh:  # sparse: no disk used
        fh.truncate(bd.MAX_WHEEL_BYTES + 1)
    assert any("over the 100 MiB" in p for p in bd.check([main_wheel(bd.main_wheel_files()), *models]))
    problems = bd.check([main_wheel(bd.main_wheel_files()), *model_wheels(drop="confidence.npz")])
    assert len(problems) == len(folders) and all("confidence.npz" in p for p in problems), problems
