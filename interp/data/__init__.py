"""Data: the bundled prompt sets (files in this folder), their reader, TruthfulQA, and the registry of bundled models."""
