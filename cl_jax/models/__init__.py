"""Model zoo: encoder name → flax module constructor, and `create_model(config, ...)`."""
from typing import Mapping

import ml_collections

from cl_jax.models.convnet import ConvNet
from cl_jax.models.heads import ContrastiveModel, ProjectionHead
from cl_jax.models.resnet import ResNet18, ResNet50

ENCODERS = {
    "convnet": ConvNet,
    "resnet18_cifar": lambda: ResNet18(stem="cifar"),
    "resnet18": lambda: ResNet18(stem="imagenet"),
    "resnet50_cifar": lambda: ResNet50(stem="cifar"),
    "resnet50": lambda: ResNet50(stem="imagenet"),
}


def create_model(model_config: ml_collections.ConfigDict,
                 probe_classes: Mapping[str, int]) -> ContrastiveModel:
  """Encoder + projection head (+ online probes for the labels in `probe_classes`)."""
  return ContrastiveModel(
      encoder=ENCODERS[model_config.encoder](),
      head=ProjectionHead(num_layers=model_config.head_layers,
                          hidden_dim=model_config.head_hidden_dim,
                          embed_dim=model_config.embed_dim,
                          batchnorm=model_config.head_batchnorm),
      probe_classes=dict(probe_classes))
