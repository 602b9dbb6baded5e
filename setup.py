"""The build rules pyproject.toml cannot state; everything else about the package is there.

One rule for what the edgecxr wheel holds: every file in every folder under edgecxr/ (caches
aside), except the reference model bundles (a folder in edgecxr/reference/ with a bundle.json).
No list of globs: a hand list once left out confidence.npz, and the installed `edgecxr infer`
failed. Small non-bundle data beside them (the orientation gate) ships here, because every model's
input checks need it. Each model bundle is its own wheel, edgecxr-model-<name>, installing into
edgecxr/reference/<name>/ (packaging/build_dist.py, `make dist`): the weights are 150 MB and
package indexes refuse a file over 100 MiB.

The device build profiles' one home is build_engines/ at the top of the checkout (targets and
commands in its README); they ship as edgecxr/profiles/, where `--profile NAME` finds them in an
installed package (edgecxr/stages/engine/profile.py). Mapping a folder from outside edgecxr/ takes
`package_dir` and an explicit package list, which `[tool.setuptools.packages.find]` cannot give.
"""

from pathlib import Path

from setuptools import find_namespace_packages, setup


def _ships(package: str) -> bool:
    folder = Path(*package.split("."))
    return "__pycache__" not in folder.parts and not (folder / "bundle.json").is_file()


setup(
    packages=[p for p in find_namespace_packages(include=["edgecxr", "edgecxr.*"]) if _ships(p)] + ["edgecxr.profiles"],
    package_dir={"edgecxr.profiles": "build_engines"},
    package_data={"": ["*"]},
    include_package_data=False,  # the rule above only: a stale egg-info SOURCES.txt once shipped the weights
    exclude_package_data={"": ["*.pyc", "*.pyo", ".bundle.lock"]},  # the lock a bundle write leaves (core/lock.py)
)
