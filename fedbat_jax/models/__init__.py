"""Model registry: a new model is one module and one entry in ``MODELS``.

A model is a Flax module called as ``model.apply(variables, x, train=..., mask=..., mutable=...)``
with ``variables = {'params': ..., 'batch_stats': ...}``; FedBAT never looks inside it, it only
picks parameter leaves by a predicate (``fedbat_jax.local.default_binarize_predicate``).
"""
from __future__ import annotations

import flax.linen as nn

from fedbat_jax.models.char_lstm import CharLSTM
from fedbat_jax.models.char_transformer import CharTransformer
from fedbat_jax.models.cnn4 import CNN4
from fedbat_jax.models.emnist_cnn import EmnistCNN
from fedbat_jax.errors import ConfigError
from fedbat_jax.models.logreg import LogReg
from fedbat_jax.models.mobilenet import MobileNet
from fedbat_jax.models.resnet import ResNet10
from fedbat_jax.models.vit import ViT
from fedbat_jax.registry import Registry

# The ``model`` setting: name -> a Flax module class taking ``num_classes`` (and ``width``; a model with a ``depth``,
# ``heads`` or ``patch`` field takes the ``model_depth``, ``model_heads`` or ``model_patch`` setting too).
MODELS = Registry("model", {
    "cnn4": CNN4,  # Fashion-MNIST, SVHN
    "resnet10": ResNet10,  # CIFAR-10, CIFAR-100
    "logreg": LogReg,  # convex: convergence-rate studies
    "vit": ViT,  # a small vision transformer (patch 4, width 64, 4 blocks of 4 heads)
    "mobilenet": MobileNet,  # depthwise-separable convolutions with BatchNorm
    "char_lstm": CharLSTM,  # Shakespeare next character: embed 8, 2 LSTM layers of 256 (TFF, FedJAX)
    "char_transformer": CharTransformer,  # Shakespeare next character: a causal transformer of the LSTM's size
    "emnist_cnn": EmnistCNN,  # EMNIST-62: TFF's / FedJAX's conv-dropout CNN
})


def make_model(name: str, num_classes: int, width: int = 0, depth: int = 0, heads: int = 0,
               patch: int = 0) -> nn.Module:
    """``width`` > 0 scales the model's channels (its first stage's width); 0 keeps the paper's. ``depth``,
    ``heads`` and ``patch`` > 0 set the model's field of that name (0 keeps its default). A model without that
    field refuses a value for it in one line (never ignores it)."""
    model = MODELS[name]
    shape = {"width": width, "depth": depth, "heads": heads, "patch": patch}
    for field, value in shape.items():
        if value and field not in model.__dataclass_fields__:
            having = [n for n, m in MODELS.entries() if field in m.__dataclass_fields__]
            raise ConfigError(f"model_{field}={value} does not apply to model={name} (it has no {field}); "
                              f"models with one: {', '.join(having)}")
    given = {k: v for k, v in shape.items() if v}
    return model(num_classes=num_classes, **given)
