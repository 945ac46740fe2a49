"""Analyses from the literature, each a short composition of interp's pieces returning a Result."""
