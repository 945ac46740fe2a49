"""Steering and weight edits: ITI's head steering, G-ACT's concept router, llama.cpp control vectors, weight
orthogonalisation, fine-tunes, and the projections of weight updates."""
