"""Consumers of the model registry: the champion/challenger gate, rollback and batch scoring."""
