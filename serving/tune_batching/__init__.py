"""Finds batching parameters by experiment: `python -m serving.tune_batching` (command.py)
measures a grid of them under load (tuner.py, load.py) and writes the best, recorded in ML
Metadata when given a store (recorded.py)."""
