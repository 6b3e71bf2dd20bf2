"""Exports and Keras safe mode: a model with code (a Lambda) exports only with --unsafe, and then all the way (#33)."""

from tests.commands.test_cli import assert_user_error, invoke


def test_a_model_with_code_exports_to_keras_with_unsafe_and_only_then(runner, tmp_path):
    import keras

    tokens = keras.Input((None,), dtype="int32")
    x = keras.layers.Lambda(lambda t: t * 2.0)(keras.layers.Embedding(100, 8)(tokens))
    source = tmp_path / "with_code.keras"
    keras.Model(tokens, keras.layers.Dense(100)(x)).save(source)
    assert_user_error(invoke(runner, "export", source, "--format", "keras", "--out", tmp_path / "safe.keras"), "--unsafe")
    assert not (tmp_path / "safe.keras").exists()
    result = invoke(runner, "export", source, "--format", "keras", "--out", tmp_path / "copy.keras", "--unsafe")
    assert result.exit_code == 0, result.output  # the copy is loaded back for its check as its source was: unsafe
    assert (tmp_path / "copy.keras").is_file() and "max |diff|" in result.stdout
