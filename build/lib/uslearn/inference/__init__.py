"""Using trained models: the model package and what scores images with it.

    package.py    ModelPackage: weights + classes + thresholds + sizes + preprocessing (+ Algorithm 1)
    pyfunc.py     its MLflow python_function face (signature, predict on paths/bytes/arrays)
    sources.py    dataset rows, image folders, DICOM exports as ordered work (import rules)
    score.py      batched single-process scoring;  ray_batch.py: the same as a Ray Data pipeline
    output.py     the predictions table and file;  curate.py: clusters, proposals, to-label ranking

A room between the strategies (whose evaluation rules it applies) and the study, which logs
every finished run's package as its MLflow model (``uslearn.study.run_model``) and registers
and opens ``runs:/`` and ``models:/`` references (``uslearn.study.logged_models``). The ``predict`` / ``curate`` /
``register`` commands are ``uslearn/predict_cli.py``.
"""
