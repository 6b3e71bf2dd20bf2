"""The model zoo. This is the one place where built-in families are registered."""

from zoo import cnn_classifier, hub_classifier, lstm_classifier, lstm_seq2seq, lstm_textgen, transformer_classifier, transformer_lm, transformer_seq2seq


def register_all(registry) -> None:
    """Register every built-in model family in `registry`."""
    registry.register(lstm_textgen.SPEC)
    registry.register(cnn_classifier.SPEC)
    registry.register(transformer_lm.SPEC)
    registry.register(lstm_classifier.SPEC)
    registry.register(transformer_classifier.SPEC)
    registry.register(hub_classifier.SPEC)
    registry.register(transformer_seq2seq.SPEC)
    registry.register(lstm_seq2seq.SPEC)
