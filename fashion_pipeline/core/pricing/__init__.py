"""Price regression: features, regressors, intervals, metrics and the publishing gate."""

from .features import PriceInputs, build_price_inputs
from .price_metrics import regression_metrics
from .models import PriceModel
from .training import TrainingResult, train_price_models

__all__ = ["PriceInputs", "build_price_inputs", "regression_metrics", "PriceModel", "TrainingResult", "train_price_models"]
