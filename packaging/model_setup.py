"""setup.py of one reference-model wheel, edgecxr-model-<name>; build_dist.py writes it, with a
model.json and a link to edgecxr/reference/<name>/, into a temporary project per model.

The wheel holds every file in the model's folder (the one rule: nothing to forget) and installs
them into edgecxr/reference/<name>/ in site-packages, where edgecxr finds reference models
(edgecxr/runtime/store.py REFERENCE_DIR): no lookup code for installed models, and the checkout
needs no copy. It pins the edgecxr version it was built with: the bundle format is that version's.
"""

import json
from pathlib import Path

from setuptools import setup

spec = json.loads((Path(__file__).parent / "model.json").read_text(encoding="utf-8"))
package = f"edgecxr.reference.{spec['name']}"

setup(
    name=f"edgecxr-model-{spec['name']}",
    version=spec["version"],
    description=f"The {spec['name']} reference model of edgecxr (deployable ONNX files, sha256-checked on load)",
    license="Apache-2.0",
    python_requires=">=3.10",
    install_requires=[f"edgecxr=={spec['version']}"],
    packages=[package],
    package_data={package: ["*"]},
    zip_safe=False,
)
