"""Studies: a spec (``spec.py``) resolved under a profile, run as Ray Tune trials logged to MLflow.

Every ``studies/*.py`` builds a ``StudySpec`` from here and hands it to
``uslearn.study_cli.main``, which runs it and then writes its analysis report.
"""

from uslearn.study.profiles import PROFILES
from uslearn.study.resources import Resources
from uslearn.study.spec import (
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
    "make_plan",
    "validate",
]
