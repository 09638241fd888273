"""Model registry: a new model is one module and one entry in ``MODELS``.

A model is a Flax module called as ``model.apply(variables, x, train=..., mask=..., mutable=...)``
with ``variables = {'params': ..., 'batch_stats': ...}``; FedBAT never looks inside it, it only
picks parameter leaves by a predicate (``fedbat_jax.local.default_binarize_predicate``).
"""
from __future__ import annotations

import flax.linen as nn

from fedbat_jax.models.cnn4 import CNN4
from fedbat_jax.models.logreg import LogReg
from fedbat_jax.models.resnet import ResNet10
from fedbat_jax.registry import Registry

# The ``model`` setting: name -> a Flax module class taking ``num_classes`` (and ``width``).
MODELS = Registry("model", {
    "cnn4": CNN4,  # Fashion-MNIST, SVHN
    "resnet10": ResNet10,  # CIFAR-10, CIFAR-100
    "logreg": LogReg,  # convex: convergence-rate studies
})


def make_model(name: str, num_classes: int, width: int = 0) -> nn.Module:
    """``width`` > 0 scales the model's channels (its first stage's width); 0 keeps the paper's."""
    return MODELS[name](num_classes=num_classes, **({"width": width} if width else {}))
