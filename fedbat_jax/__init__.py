"""fedbat-jax: FedBAT (learnable binarization for federated learning) in JAX/Flax, as pure functions.

``fedbat_jax.make_train(config)`` returns a pure ``train(key) -> (server_state, metrics)`` (a whole run,
jittable and vmappable); ``fedbat_jax.train`` has the run loop with metrics and checkpoints.
"""


def __getattr__(name):  # lazy: `import fedbat_jax.errors` stays light (the CLI reports bad input fast)
    if name == "make_train":
        from fedbat_jax.whole_run import make_train

        return make_train
    raise AttributeError(f"module 'fedbat_jax' has no attribute {name!r}")
