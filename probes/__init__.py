"""Linear probes: per-layer (and per-head) logistic and mass-mean probes fitted in one batched call, and the
probe weight as a direction (`ProbeDirection`). Builds on `interp`; `interp` never imports it."""

from probes.direction import ProbeDirection
from probes.linear import KINDS, LinearProbes, ProbeReport, evaluate, stratified_split
from probes.plots import accuracy_figure

__all__ = ["KINDS", "LinearProbes", "ProbeDirection", "ProbeReport", "evaluate", "stratified_split", "accuracy_figure"]
