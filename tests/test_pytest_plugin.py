"""The pytest plugin: `kpe_policy` runs a test once per policy, in its scope."""

pytest_plugins = ["pytester"]


def test_kpe_policy_parametrizes_and_scopes(pytester):
    pytester.makeini("[pytest]\nkpe_policies = float32 mixed_bfloat16\n")
    pytester.makepyfile(
        """
        import keras
        import keras_policy_ext as kpe

        def test_layer(kpe_policy):
            assert isinstance(kpe_policy, kpe.DTypePolicy)
            assert keras.layers.Dense(2).dtype_policy == kpe_policy
            assert kpe.config.dtype_policy() is kpe_policy

        def test_state_is_restored_afterwards():
            assert kpe.config.dtype_policy().name == "float32"
        """
    )
    result = pytester.runpytest("-v", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        ["*test_layer?float32? PASSED*", "*test_layer?mixed_bfloat16? PASSED*"]
    )


def test_default_policies_and_a_readable_failure(pytester):
    pytester.makepyfile(
        """
        import numpy as np
        import keras
        import keras_policy_ext as kpe

        class CastsToFloat32(keras.layers.Layer):
            def call(self, x):
                return keras.ops.cast(x, "float32")

        def test_conforms(kpe_policy):
            kpe.testing.assert_conforms(
                CastsToFloat32, np.ones((2, 3), "float32"), [kpe_policy], train=False)
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    # Only float32 conforms: every other default policy expects another dtype.
    assert outcomes["passed"] == 1 and outcomes["failed"] == 5
    result.stdout.fnmatch_lines(
        [
            "*ConformanceError*",
            "*CastsToFloat32 under kpe 'mixed_float16'*expected float16, saw output 0 is float32*",
        ]
    )
