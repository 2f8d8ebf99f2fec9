"""Tests of optimize.transforms: one module per transform family, plus the registry,
the pattern matcher and the promise that no transform changes its input."""
