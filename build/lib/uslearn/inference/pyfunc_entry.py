"""MLflow "models from code" entry: the file MLflow stores with a model and runs to load it.

Loading needs ``uslearn`` importable (``pip install`` this repository) beside torch and
torchvision; no pickled Python object is stored in the model.
"""

import mlflow

from uslearn.inference.pyfunc import PackagedModel

mlflow.models.set_model(PackagedModel())
