"""Every SIMD level this CPU supports gives the results of the scalar reference.

The level is chosen once per process, so each level runs in its own child process with
``NEARQ_SIMD`` set (the SimSIMD pattern: pin one ISA at a time)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import nearq

SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np, nearq
    rng = np.random.default_rng(21)
    # 37 dims: not a multiple of any lane width, so the tails run too
    x = rng.standard_normal((400, 37)).astype(np.float32)
    q = rng.standard_normal((20, 37)).astype(np.float32)
    out = {"info": nearq.simd_info()}
    for metric in ("l2", "ip", "cosine"):
        r = nearq.exact_search(x, q, k=10, metric=metric)
        out["exact-" + metric] = [r.ids.tolist(), r.distances.tolist()]
        for enc in ("flat", "sq8"):
            idx = nearq.Index.build(x, metric=metric, encoding=enc, threads=1, seed=0)
            r = idx.search(q, k=10, ef=len(x))  # ef = n: exhaustive, independent of the graph
            out[f"{enc}-{metric}"] = [r.ids.tolist(), r.distances.tolist()]
    print(json.dumps(out))
    """
)


def run_with(level):
    env = dict(os.environ)
    env.pop("NEARQ_SIMD", None)
    if level is not None:
        env["NEARQ_SIMD"] = level
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def scalar():
    return run_with("scalar")


def test_forcing_scalar_is_reported(scalar):
    assert scalar["info"]["level"] == "scalar"


def compare(ref, other, label):
    for key in ref:
        if key == "info":
            continue
        ids_a, d_a = (np.asarray(v) for v in ref[key])
        ids_b, d_b = (np.asarray(v) for v in other[key])
        np.testing.assert_allclose(d_b, d_a, rtol=1e-4, atol=1e-6, err_msg=f"{label} {key}")
        # ids must agree except between neighbours whose distances tie within the tolerance
        differ = ids_a != ids_b
        if differ.any():
            np.testing.assert_allclose(
                d_a[differ],
                d_b[differ],
                rtol=1e-4,
                atol=1e-6,
                err_msg=f"{label} {key}: ids differ beyond ties",
            )


def test_default_level_matches_scalar(scalar):
    default = run_with(None)
    assert default["info"]["level"] == nearq.simd_info()["level"]
    compare(scalar, default, f"default ({default['info']['level']})")


@pytest.mark.parametrize("level", ["avx2", "avx512", "neon"])
def test_each_supported_level_matches_scalar(scalar, level):
    if level not in nearq.simd_info()["supported"]:
        pytest.skip(f"{level} is not supported by this CPU")
    forced = run_with(level)
    assert forced["info"]["level"] == level
    compare(scalar, forced, level)


@pytest.mark.parametrize("value", ["bogus", "", "AVX2"])
def test_unusual_override_values_never_break_import(value):
    # Documented: an unknown name falls back to the best supported level; names are
    # case-insensitive where the kernels crate says so. Either way simd_info must be coherent.
    env = dict(os.environ, NEARQ_SIMD=value)
    proc = subprocess.run(
        [sys.executable, "-c", "import json, nearq; print(json.dumps(nearq.simd_info()))"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout)
    assert info["level"] in info["supported"]
