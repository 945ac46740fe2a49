"""Directions and subspaces from labelled activations: estimators (difference in means, PCA), candidate scoring
under interventions, and the figures they share."""
