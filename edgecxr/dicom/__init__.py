"""DICOM beside the scanner: results as DICOM objects, a Storage SCP and a watch folder (issue 14).

* `sr`: the Structured Report of one Prediction, referencing its source instance (highdicom);
* `outputs`: which DICOM results are made for a prediction and how they are written (one row per
  kind, so a Secondary Capture is one more row beside the SR);
* `spool`: the durable store of received instances, keyed by SOP Instance UID;
* `process`: classify stored files and write their results, exactly once per instance;
* `node`: `edgecxr listen`, the pynetdicom Storage SCP; `watch`: `edgecxr watch DIR`.

pynetdicom and highdicom are the optional extra `dicom-node` (`pip install 'edgecxr[dicom-node]'`);
`require` names it when one is missing, and nothing here imports them at module level.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from edgecxr.core.errors import MissingDependencyError

#: the extra that installs what this package needs
EXTRA = "dicom-node"


def require(module: str, purpose: str) -> ModuleType:
    """Import `module` (highdicom, pynetdicom) or raise the one-line error naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(module, EXTRA, purpose) from exc
