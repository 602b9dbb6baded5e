"""Inference backends behind one interface (base.Runner, table in backends) and the workstation `Classifier`.

Nothing here imports a pipeline stage or the CLI: the runtime needs neither TensorFlow nor the
exporters, and reads what the stages wrote through edgecxr.core.
"""
