"""Model zoo: encoder name → flax module constructor, and `create_model(config, ...)`."""
import functools
from typing import Mapping

import flax
import jax.numpy as jnp
import ml_collections

from cl_jax import spec
from cl_jax.models.convnet import ConvNet
from cl_jax.models.heads import ContrastiveModel, ProjectionHead
from cl_jax.models.resnet import ResNet18, ResNet50

ENCODERS = {
    "convnet": ConvNet,
    "resnet18_cifar": functools.partial(ResNet18, stem="cifar"),
    "resnet18": functools.partial(ResNet18, stem="imagenet"),
    "resnet50_cifar": functools.partial(ResNet50, stem="cifar"),
    "resnet50": functools.partial(ResNet50, stem="imagenet"),
}


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# The fields of config.model every encoder reads, and those only some encoders read.
FIELDS = {
    "dtype": spec.one_of(*sorted(DTYPES)),
    "bn_momentum": spec.Field("must be in [0, 1) (the weight of the old running statistics: 0.9 "
                              "flax/PyTorch convention, 0.99 Keras)", lambda v: 0 <= v < 1),
    "bn_epsilon": spec.positive(),
    "head_layers": spec.positive(),
    "head_hidden_dim": spec.positive(),
    "embed_dim": spec.positive(),
    "head_batchnorm": spec.Field(),
    "head_output_batchnorm": spec.Field(),
}
# Read by the objectives with a predictor (objectives.WITH_PREDICTOR) only.
PREDICTOR_FIELDS = {"predictor_hidden_dim": spec.positive()}
ENCODER_FIELDS = {name: {} for name in sorted(ENCODERS)}
ENCODER_FIELDS["convnet"] = {"conv_padding": spec.one_of("SAME", "VALID", off="SAME")}


def create_encoder(model_config: ml_collections.ConfigDict):
  """The encoder of `model_config` with its BatchNorm settings, computation dtype (and padding,
  for the ConvNet)."""
  kwargs = dict(bn_momentum=model_config.bn_momentum, bn_epsilon=model_config.bn_epsilon,
                dtype=DTYPES[model_config.dtype])
  if "conv_padding" in ENCODER_FIELDS[model_config.encoder]:
    kwargs["padding"] = model_config.conv_padding
  return ENCODERS[model_config.encoder](**kwargs)


def create_model(model_config: ml_collections.ConfigDict, probe_classes: Mapping[str, int],
                 predictor: bool = False) -> ContrastiveModel:
  """Encoder + projection head (+ online probes for the labels in `probe_classes`; + with
  `predictor` a 2-layer MLP q: Dense(model.predictor_hidden_dim)→BN→ReLU→Dense(embed_dim), the
  predictor of BYOL and SimSiam). The model is hashable (its probe classes a FrozenDict), so
  jitted functions can take it as a static argument."""
  bn = dict(bn_momentum=model_config.bn_momentum, bn_epsilon=model_config.bn_epsilon,
            dtype=DTYPES[model_config.dtype])
  return ContrastiveModel(
      encoder=create_encoder(model_config),
      head=ProjectionHead(num_layers=model_config.head_layers,
                          hidden_dim=model_config.head_hidden_dim,
                          embed_dim=model_config.embed_dim,
                          batchnorm=model_config.head_batchnorm,
                          output_batchnorm=model_config.head_output_batchnorm,
                          **bn),
      predictor=ProjectionHead(num_layers=2, hidden_dim=model_config.predictor_hidden_dim,
                               embed_dim=model_config.embed_dim, output_batchnorm=False,
                               **bn) if predictor else None,
      probe_classes=flax.core.FrozenDict(probe_classes), dtype=DTYPES[model_config.dtype])
