"""Candidate generation: implicit-feedback ALS, blocked exact top-K, retrieval metrics."""
