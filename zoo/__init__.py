"""The model zoo. This is the one place where built-in families are listed (`kerasllm.catalog` registers them)."""

from kerasllm.zoo import (
                          cnn_classifier,
                          hub_causal_lm,
                          hub_classifier,
                          lstm_classifier,
                          lstm_seq2seq,
                          lstm_textgen,
                          transformer_classifier,
                          transformer_lm,
                          transformer_seq2seq,
)

SPECS = (
    lstm_textgen.SPEC,
    cnn_classifier.SPEC,
    transformer_lm.SPEC,
    lstm_classifier.SPEC,
    transformer_classifier.SPEC,
    hub_classifier.SPEC,
    hub_causal_lm.SPEC,
    transformer_seq2seq.SPEC,
    lstm_seq2seq.SPEC,
)
