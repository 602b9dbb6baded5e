"""A node whose classifier kills the whole process on one instance, as a crashing decoder would (issue 22).

    python tests/dicom/poison_node.py SPOOL OUT MODEL POISON_UID

Starts `StorageNode` on a free port over SPOOL (instances left pending there are processed first),
waits until nothing is pending, stops and exits 0. When the instance POISON_UID reaches the model,
the process ends at once with exit code 70 (`os._exit`: no cleanup, no record, like a segfault or
an out-of-memory kill).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from edgecxr import Classifier
from edgecxr.dicom.node import StorageNode

POISONED = 70


class Poisoned:
    """A Classifier whose predict dies on one SOP Instance UID (the spool names files by it)."""

    def __init__(self, clf: Classifier, poison: str):
        self.clf, self.poison = clf, poison

    def predict(self, items, **kwargs):
        if any(Path(str(i)).stem == self.poison for i in items):
            os._exit(POISONED)
        return self.clf.predict(items, **kwargs)

    def __getattr__(self, name):
        return getattr(self.clf, name)


def main(spool: str, out: str, model: str, poison: str) -> int:
    with Classifier.load(model) as clf:
        node = StorageNode(Poisoned(clf, poison), spool, out, port=0, log=lambda line: print(line, flush=True))
        node.start()
        try:
            deadline = time.monotonic() + 120
            while node.spool.counts()["pending"] and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            node.stop()
    return 0 if not node.spool.counts()["pending"] else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
