"""The paper's SVHN (cropped digits) setting (CNN4; REFERENCE.md section 3).

    --config=experiments/configs/svhn.py                     # IID
    --config=experiments/configs/svhn.py:dirichlet           # Non-IID-1 (Dirichlet label skew)
    --config=experiments/configs/svhn.py:label_count         # Non-IID-2 (a fixed share of the classes per client)
    --config=experiments/configs/svhn.py:dirichlet,reduced   # the same on a 2-core CPU in minutes

The paper's values and the reduced variant are in fedbat_jax.config.PAPER_SETTINGS / REDUCED.
Needs the dataset's files: --config.data_dir=DIR or FEDBAT_DATA_DIR (see README).
"""
from fedbat_jax.config import paper_config


def get_config(arg: str = ""):
    return paper_config("svhn", arg)
