"""The natural federations' benchmark settings (Reddi et al., ICLR 2021, "Adaptive Federated Optimization",
appendix: the FedAvg row of its tuned grid), one config per dataset.

    --config=experiments/configs/natural.py:shakespeare    # 715 roles, char LSTM, 10 a round, batch 4, 1200 rounds
    --config=experiments/configs/natural.py:femnist        # writers, EMNIST CNN, 10 a round, batch 20, 1500 rounds

Shakespeare: 1 local epoch, batch 4, client SGD at lr 1 (10^0), server SGD at lr 1 (plain averaging), 1200 rounds.
EMNIST-62 ("EMNIST CR"): 1 local epoch, batch 20, client lr 0.1 (10^-1), server lr 1, 1500 rounds.
Clients are the dataset's own (``partition=auto`` is ``natural`` for these) and every one takes part
(``num_clients=0``). Everything else is ``default_config()``'s: FedBAT's own settings are the paper's.
Evaluation every 20 rounds (the pooled test set and its per-client distribution). These need the files
(``--config.data_dir=DIR`` or ``FEDBAT_DATA_DIR``; docs/data.md says where to get them).
"""
from fedbat_jax.config import default_config, did_you_mean
from fedbat_jax.errors import ConfigError

BENCHMARKS = {
    "shakespeare": dict(model="char_lstm", rounds=1200, clients_per_round=10, local_epochs=1, batch_size=4, lr=1.0),
    "femnist": dict(model="emnist_cnn", rounds=1500, clients_per_round=10, local_epochs=1, batch_size=20, lr=0.1),
}


def get_config(arg: str = ""):
    if arg not in BENCHMARKS:
        raise ConfigError(f"natural.py takes DATASET, one of: {', '.join(BENCHMARKS)} (got {arg!r}"
                          f"{did_you_mean(arg, BENCHMARKS)})")
    c = default_config()
    c.dataset = arg
    c.update(num_clients=0, partition="auto", server_optimizer="sgd", server_lr=1.0, eval_every=20,
             **BENCHMARKS[arg])
    return c
