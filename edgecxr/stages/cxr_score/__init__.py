"""Fitting the CXR score (runtime/cxr_score.py): statistics from `train` films, choices on `val` and the
FIT half of the large OOD set (stages/confidence/ood_large), never on `test` or the REPORT half."""
