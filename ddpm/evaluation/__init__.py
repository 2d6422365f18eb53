"""Evaluation of generated PathMNIST patches: a tissue encoder, distribution metrics, memorization."""
