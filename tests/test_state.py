import keras

import keras_policy_ext as kpe


def keras_global():
    """Keras's own per-thread global policy, as stored (`None`: never set)."""
    return kpe.internals.keras_global_policy()


def test_clean_state_restores_keras_s_global_object():
    keras.config.set_dtype_policy("mixed_bfloat16")  # stock Keras's setter
    theirs = keras_global()
    with kpe.testing.clean_state():
        keras.config.set_dtype_policy("float16")
        kpe.config.set_dtype_policy("mixed_float16")
    assert keras_global() is theirs
    keras.utils.clear_session(free_memory=False)
    with kpe.testing.clean_state():
        keras.config.set_dtype_policy("float16")
    assert keras_global() is None


def test_clean_state_in_an_installed_block_leaves_the_block_s_plugin_alone():
    with kpe.installed():
        with kpe.testing.clean_state():
            kpe.config.set_dtype_policy("mixed_float16")
        assert kpe.is_installed()
    assert not kpe.is_installed()


def test_clean_state_restores_an_explicit_install():
    kpe.install()
    with kpe.testing.clean_state():
        kpe.uninstall()
        kpe.config.set_dtype_policy("mixed_float16")
    assert kpe.is_installed()
    assert kpe.config.dtype_policy().name == "float32"
