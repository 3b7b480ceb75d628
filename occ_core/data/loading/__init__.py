"""Torch loading of a prepared folder: the batch dataset and its target sources."""
