"""Lets `gcloud ai-platform jobs submit training --package-path trainer/` ship the whole project.

gcloud builds the package in the parent directory of --package-path, with this file when
there is one; without it gcloud packages `trainer/` alone, and the job then fails to import
`export`. All metadata lives in pyproject.toml (setuptools >= 61 reads it from there).
"""

from setuptools import setup

setup()
