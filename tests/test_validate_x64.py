"""`validate` reads `JAX_ENABLE_X64` as JAX does, from any backend's process.

JAX turns x64 on for `1 y yes t true on` and off for `0 n no f false off`, in
any case, and refuses anything else at import. `validate(policy,
backend="jax")` asked from a TensorFlow or torch process can only read the
variable; asked on JAX, it reads what a float64 tensor really holds, so there
the variable is checked in a JAX process of its own, started with it.
"""

import os
import subprocess
import sys
import textwrap

import keras
import pytest

import keras_policy_ext as kpe
from keras_policy_ext.backends import installed_backends, jax_x64_on
from keras_policy_ext.cli.matrix import jax_x64_on as matrix_jax_x64_on

BACKEND = keras.backend.backend()
ON = ["1", "y", "yes", "t", "true", "on", "TRUE", "Yes", "On"]
OFF = ["0", "n", "no", "f", "false", "off", "OFF"]
SPELLINGS = [(value, True) for value in ON] + [(value, False) for value in OFF]
NEITHER = ["", "2", "maybe"]  # JAX refuses these at import (ValueError): not on


@pytest.mark.parametrize("value, on", SPELLINGS)
def test_jax_x64_on_reads_every_spelling_jax_reads(value, on):
    assert jax_x64_on({"JAX_ENABLE_X64": value}) is on
    assert matrix_jax_x64_on({"JAX_ENABLE_X64": value}) is on  # the CLI's is the same function


@pytest.mark.parametrize("value", NEITHER)
def test_jax_x64_on_is_off_for_a_value_jax_refuses(value):
    assert jax_x64_on({"JAX_ENABLE_X64": value}) is False


def test_jax_x64_on_is_off_when_the_variable_is_unset(monkeypatch):
    monkeypatch.delenv("JAX_ENABLE_X64", raising=False)
    assert jax_x64_on() is False
    monkeypatch.setenv("JAX_ENABLE_X64", "yes")
    assert jax_x64_on() is True  # this process's environment by default


@pytest.mark.skipif(
    BACKEND == "jax",
    reason="on JAX, validate reads what a float64 tensor holds, not the variable: "
    "test_validate_on_jax_agrees_with_what_jax_holds checks that",
)
@pytest.mark.parametrize("value, on", SPELLINGS)
def test_validate_for_jax_from_another_backend_reads_the_variable_as_jax_does(
    value, on, monkeypatch
):
    monkeypatch.setenv("JAX_ENABLE_X64", value)
    for policy in ("float64", "params=float64,compute=float32"):
        ok, reason = kpe.validate(policy, backend="jax")
        assert ok is on, (value, policy, reason)
        assert ("x64 is disabled" in reason) is (not on)
    assert kpe.validate("mixed_float16", backend="jax").ok  # no float64: never refused


PROBE = textwrap.dedent(
    """
    import json, keras, keras_policy_ext as kpe
    holds = str(keras.ops.ones((2,), dtype="float64").dtype)
    print(json.dumps([kpe.validate("float64").ok, holds]))
    """
)


@pytest.mark.skipif("jax" not in installed_backends(), reason="needs JAX installed")
@pytest.mark.parametrize("value, on", [("yes", True), ("On", True), ("t", True), ("off", False)])
def test_validate_on_jax_agrees_with_what_jax_holds(value, on):
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_ENABLE_X64": value}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ok, holds = __import__("json").loads(done.stdout.strip().splitlines()[-1])
    assert holds == ("float64" if on else "float32")
    assert ok is on
