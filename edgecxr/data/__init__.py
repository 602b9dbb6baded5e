"""Data layer: manifests, splits, class mapping and image decoding."""

from edgecxr.data.manifest import (
    CLASSES_3,
    CLASSES_4,
    SPLITS,
    Record,
    label_indices,
    map_label,
    read_manifest,
    select,
)

__all__ = [
    "CLASSES_3",
    "CLASSES_4",
    "SPLITS",
    "Record",
    "label_indices",
    "map_label",
    "read_manifest",
    "select",
]
