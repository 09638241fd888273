"""The paper's CIFAR-100 setting (ResNet-10, crop+flip augmentation; REFERENCE.md section 3).

    --config=experiments/configs/cifar100.py                     # IID
    --config=experiments/configs/cifar100.py:dirichlet           # Non-IID-1 (Dirichlet label skew)
    --config=experiments/configs/cifar100.py:label_count         # Non-IID-2 (a fixed share of the classes per client)
    --config=experiments/configs/cifar100.py:dirichlet,reduced   # the same on a 2-core CPU in minutes

The paper's values and the reduced variant are in fedbat_jax.config.PAPER_SETTINGS / REDUCED.
Needs the dataset's files: --config.data_dir=DIR or FEDBAT_DATA_DIR (see README).
"""
from fedbat_jax.config import paper_config


def get_config(arg: str = ""):
    return paper_config("cifar100", arg)
