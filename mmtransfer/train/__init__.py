"""Training: ``train(load_train_config("recipe.yaml"))`` or ``mmtransfer train recipe.yaml key=value``."""

from mmtransfer.train.config import TrainConfig, load_train_config, train_config_from_dict
from mmtransfer.train.loop import NonFiniteLossError, train

__all__ = ["NonFiniteLossError", "TrainConfig", "load_train_config", "train", "train_config_from_dict"]
