import keras_policy_ext as kpe


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
