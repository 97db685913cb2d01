"""Evaluation of learned representations and clusterings."""
