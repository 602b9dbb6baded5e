"""Calibrated probabilities and out-of-distribution abstention: the fits (`edgecxr confidence`).

The runtime half, which applies them in every backend, is edgecxr.runtime.confidence.
"""
