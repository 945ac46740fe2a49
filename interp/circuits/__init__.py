"""Circuits: clean/corrupted tasks, activation, attribution and path patching, attention heads as matrices,
distributed alignment search (DAS), and the interpretability-illusion checks with their toy models."""
