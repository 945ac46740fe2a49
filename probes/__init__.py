"""Linear probes: per-layer (and per-head) logistic and mass-mean probes fitted in one batched call."""

from probes.linear import KINDS, LinearProbes, ProbeReport, evaluate, stratified_split
from probes.plots import accuracy_figure

__all__ = ["KINDS", "LinearProbes", "ProbeReport", "evaluate", "stratified_split", "accuracy_figure"]
