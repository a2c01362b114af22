"""Registered models. Importing this package registers every architecture (explicit imports, no scanning)."""

from quantir.models import abpn, edsr, mobileone_sr, qatie  # noqa: F401  (registration side effect)
from quantir.models.protocol import Reparameterizable, RestorationModel
from quantir.models.registry import ModelInfo, create_model, describe_models, list_models, model_config
from quantir.models.reparam import recalibrate_bn, reparameterize_model

__all__ = ["ModelInfo", "Reparameterizable", "RestorationModel", "create_model", "describe_models", "list_models",
           "model_config", "recalibrate_bn", "reparameterize_model"]
