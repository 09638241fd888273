"""fb.sweep: seeds x a grid of traceable settings as one program, the runs sharded over (4 forced CPU)
devices; each run the same as make_train's one by one; a bad grid or seed list is one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fedbat_jax as fb
from conftest import tiny
from fedbat_jax import sweeps
from fedbat_jax.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

FOUR_DEVICES = textwrap.dedent("""
    import json, re, sys
    import jax, numpy as np
    sys.path.insert(0, "tests")
    import fedbat_jax as fb
    from conftest import tiny
    from fedbat_jax.sweeps import compile_sweep
    c = tiny("fedbat", model="logreg", lr=0.02, batch_size=128)
    program = compile_sweep(c, [0, 1], grid={"lr": [0.01, 0.02, 0.05, 0.1]})
    records = program.run() + fb.sweep(c, [2, 0, 1])  # 8 runs on 4 devices, then 3 (padded to 4)
    single = jax.jit(fb.make_train(c))
    out = {"devices": jax.device_count(), "mesh": program.mesh.size, "records": [], "pairs": [],
           "spec": list(program.compiled.input_shardings[0][0].spec),
           "shards": [list(s.data.shape) for s in program.args[0].addressable_shards],
           "shard_devices": len({s.device for s in program.args[0].addressable_shards}),
           "params": re.findall(r'= (\\S+) parameter\\(\\d+\\).*op_name="([^"]+)"', program.compiled.as_text())}
    for r in records:
        _, m = single(jax.random.PRNGKey(r["seed"]), {"lr": r["settings"].get("lr", c.lr)})
        out["records"].append([r["seed"], r["settings"], sorted(r["metrics"])])
        out["pairs"].append([[r["metrics"][k].tolist(), np.asarray(m[k]).tolist()] for k in sorted(m)])
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.slow
def test_sweep_over_four_devices_is_the_runs_one_by_one(xla_cache_env):
    """8 runs (2 seeds x 4 lr) split 2 a device over 4 forced CPU devices, and 3 runs padded to 4: each
    record equals ``jax.jit(make_train(cfg))(PRNGKey(seed), {"lr": v})`` to rounding, in seed-major order."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), **xla_cache_env)
    env["XLA_FLAGS"] += " --xla_force_host_platform_device_count=4"
    done = subprocess.run([sys.executable, "-c", FOUR_DEVICES], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(next(line[7:] for line in done.stdout.splitlines() if line.startswith("RESULT ")))
    assert out["devices"] == out["mesh"] == out["shard_devices"] == 4
    assert out["spec"] == ["runs"] and out["shards"] == [[2, 2]] * 4
    params = {name: shape for shape, name in out["params"]}  # the parameters of the program each device runs

    def shape(prefix):
        return next(s for name, s in params.items() if name.startswith(prefix))

    assert shape("keys").startswith("u32[2,2]") and shape("hparams").startswith("f32[2]")  # 2 runs of 8 a device
    assert shape("data[0].inputs").startswith("u8[4000,")  # the data: an argument, whole on every device
    lrs = [0.01, 0.02, 0.05, 0.1]
    metrics = ["test_accuracy", "test_loss", "train_loss", "uplink_bits"]
    assert out["records"] == ([[s, {"lr": v}, metrics] for s in (0, 1) for v in lrs]
                              + [[s, {}, metrics] for s in (2, 0, 1)])
    for (seed, settings, _), pairs in zip(out["records"], out["pairs"]):
        for name, (swept, alone) in zip(metrics, pairs):
            np.testing.assert_allclose(swept, alone, rtol=1e-4, atol=1e-6, err_msg=f"{name} seed {seed} {settings}")


@pytest.mark.slow
def test_records_seed_major_with_settings_dataset_and_metrics_fn(monkeypatch):
    """One device: the records' order, settings and metrics; ``dataset`` and ``metrics_fn`` reach make_train."""
    from fedbat_jax import whole_run
    from fedbat_jax.data import load_dataset

    c = tiny("fedbat", model="logreg", lr=0.02, batch_size=128)
    ds = load_dataset(c.dataset)
    monkeypatch.setattr(whole_run, "load_dataset", lambda *a: pytest.fail("the dataset given was not used"))

    def norm(server, clients):
        return {"norm": sum(jnp.sum(w * w) for w in jax.tree.leaves(server.params))}

    records = fb.sweep(c, [3, 4], grid={"lr": [0.02, 0.05], "rho": (6.0,)}, dataset=ds, metrics_fn=norm)
    assert [(r["seed"], r["settings"]) for r in records] == [(s, {"lr": v, "rho": 6.0}) for s in (3, 4)
                                                            for v in (0.02, 0.05)]
    for r in records:
        assert set(r["metrics"]) == {"test_accuracy", "test_loss", "train_loss", "uplink_bits", "norm"}
        assert all(isinstance(v, np.ndarray) and v.shape == (c.rounds,) for v in r["metrics"].values())
        assert type(r["seed"]) is int and all(type(v) is float for v in r["settings"].values())
    losses = [tuple(r["metrics"]["train_loss"]) for r in records]
    assert len(set(losses)) == 4  # every (seed, lr) a different run


@pytest.mark.parametrize("seeds,grid,needle", [
    ([], None, "seeds is empty"),
    ([0, 1.5], None, "seeds must be integers, got 1.5"),
    (3, None, "seeds must be a list of integers"),
    ([0, -1], None, "seeds must be in [0, 2**32), got -1"),  # the CLI's --config.seed check
    ([2**32], None, "seeds must be in [0, 2**32), got 4294967296"),
    ([0], {"lrr": [0.1]}, "grid setting 'lrr' is unknown; a grid may hold lr, rho, alpha_min, alpha_max"),
    ([0], {"batch_size": [32]}, "grid setting 'batch_size' shapes the program: run one sweep per value"),
    ([0], {"lr": []}, "grid['lr'] is empty"),
    ([0], {"lr": 0.1}, "grid['lr'] must be a list of numbers, got 0.1"),
    ([0], {"lr": "0.1"}, "grid['lr'] must be a list of numbers"),
    ([0], {"lr": [0.1, "fast"]}, "grid['lr'] holds 'fast', not a number"),
    ([0], {"lr": [True]}, "grid['lr'] holds True, not a number"),
    ([0], {"lr": [0.1, -1.0]}, "grid point {'lr': -1.0}: lr must be > 0, got -1.0"),
    ([0], {"rho": [float("nan")]}, "grid point {'rho': nan}: rho must be a finite number"),
    ([0], {"alpha_min": [0.01, 0.1]}, "grid point {'alpha_min': 0.1}: alpha_min (0.1) must be < alpha_max"),
    ([0], [("lr", [0.1])], "grid must be a dict"),
])
def test_bad_seeds_or_grid_is_one_line_before_anything_is_built(monkeypatch, seeds, grid, needle):
    monkeypatch.setattr(sweeps, "build_train", lambda *a, **k: pytest.fail("built before the grid was checked"))
    with pytest.raises(ConfigError) as e:
        fb.sweep(tiny(), seeds, grid)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_seed_given_twice_is_a_warning(monkeypatch):
    with pytest.warns(UserWarning, match=r"seeds \[1\] appear more than once: their runs are identical"):
        assert sweeps.seed_list([0, 1, 1]) == [0, 1, 1]


def test_the_configs_own_error_is_not_blamed_on_a_grid_point():
    with pytest.raises(ConfigError, match="^lr must be > 0"):
        fb.sweep(tiny(lr=-1.0), [0], {"rho": [1.0]})


def test_sweep_is_the_function_after_its_module_is_imported():
    """The module is ``sweeps``: importing a submodule named ``sweep`` would rebind ``fb.sweep`` to it."""
    assert fb.sweep is sweeps.sweep  # this file imported fedbat_jax.sweeps first
    assert "sweep" in fb.__all__
