"""Studies: a spec (``spec.py``) resolved under a profile, run as Ray Tune trials logged to MLflow.

``main(SPEC, __file__)`` is what every ``studies/*.py`` calls; the rest is importable for tests.
"""

from uslearn.study.cli import main
from uslearn.study.resources import Resources
from uslearn.study.spec import (
    PROFILES,
    Choice,
    LogUniform,
    Search,
    StudySpec,
    Uniform,
    make_plan,
    validate,
)

__all__ = [
    "PROFILES",
    "Choice",
    "LogUniform",
    "Resources",
    "Search",
    "StudySpec",
    "Uniform",
    "main",
    "make_plan",
    "validate",
]
