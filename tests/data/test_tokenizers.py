"""Tokenizers: every kind round-trips, Python and TensorFlow paths agree, files old and new load."""

import json

import numpy as np
import pytest

from kerasllm.core.errors import UserError
from kerasllm.data.text import builtin_text
from kerasllm.generation import StreamDecoder
from kerasllm.tokenizers import KINDS, REPLACEMENT, Tokenizer

TRAIN = builtin_text("python-docs")[:60000]
MIXED = "Café naïve — 日本語のテキスト, Ελληνικά and русский!\n\n\tx = 42  # ∑ 🙂"
SEEN = "The value of x is computed\n  before the call (see below).\n"


@pytest.fixture(scope="module", params=KINDS)
def tokenizer(request):
    return Tokenizer.fit(TRAIN, request.param, 500)


def test_round_trip_of_text_the_tokenizer_has_seen(tokenizer):
    if tokenizer.kind == "word":  # a 400-word vocabulary misses some of these words
        tokenizer = Tokenizer.fit(TRAIN + SEEN, "word", 20000)
    assert tokenizer.decode(tokenizer.encode(SEEN)) == SEEN


def test_unseen_characters_and_mixed_scripts(tokenizer):
    decoded = tokenizer.decode(tokenizer.encode(MIXED))
    if tokenizer.kind == "sentencepiece":
        assert decoded == MIXED  # byte fallback: nothing is lost
        return
    # The others map what they never saw to [UNK] (shown as U+FFFD) and keep the rest in place.
    assert REPLACEMENT in decoded and " and " in decoded
    assert "x = " in decoded
    if tokenizer.kind != "word":  # the word level has no token for the unseen run "\n\n\t"
        assert "\n\n" in decoded
    if tokenizer.kind == "char":  # word-based kinds replace a whole word with an unseen character ("Café")
        assert decoded.startswith("Caf")
    kept = decoded.replace(REPLACEMENT, "")
    assert set(kept) <= set(MIXED)
    if tokenizer.kind == "char":
        assert len(decoded) == len(MIXED)


def test_python_and_tensorflow_paths_agree(tokenizer):
    import tensorflow as tf

    texts = [SEEN, MIXED, ""]
    ragged = tokenizer.tf_encode(tf.constant(texts))
    for text, row in zip(texts, ragged.to_list()):
        assert list(tokenizer.encode(text)) == row
    # ... also inside a tf.data pipeline, and back to text with TF ops
    dataset = tf.data.Dataset.from_tensor_slices(texts).map(lambda t: tokenizer.tf_encode(tf.reshape(t, [1])).flat_values)
    assert [list(ids) for ids in dataset.as_numpy_iterator()] == ragged.to_list()
    decoded = tokenizer.tf_decode(tf.ragged.constant([tokenizer.encode(SEEN).tolist()])).numpy()[0].decode("utf-8")
    assert decoded == tokenizer.decode(tokenizer.encode(SEEN))


def test_special_tokens_come_first_and_are_never_generated(tokenizer):
    assert tokenizer.vocabulary[:4] == ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    assert tokenizer.special_tokens == {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
    assert tokenizer.never_generated() == [0, 1, 2]
    with_encoder = Tokenizer.fit(TRAIN[:5000], tokenizer.kind, 500, encoder_tokens=True)
    assert {"cls", "sep", "mask"} <= set(with_encoder.special_tokens)


def test_saved_and_loaded_with_a_format_version(tokenizer, tmp_path):
    tokenizer.save(tmp_path)
    saved = json.loads((tmp_path / "tokenizer.json").read_text())
    assert saved["format_version"] == 2 and saved["kind"] == tokenizer.kind
    again = Tokenizer.load(tmp_path)
    assert type(again) is type(tokenizer) and list(again.encode(MIXED)) == list(tokenizer.encode(MIXED))


def test_streaming_decode_emits_whole_characters(tokenizer):
    stream = StreamDecoder(tokenizer)
    ids = tokenizer.encode(MIXED)
    assert "".join(stream.push(i) for i in ids) == tokenizer.decode(ids)


def test_exported_graph_tokenizes_like_python(tokenizer, tmp_path):
    import tensorflow as tf

    tf.saved_model.save(tokenizer.tf_module(), str(tmp_path / "tokenizer"))
    loaded = tf.saved_model.load(str(tmp_path / "tokenizer"))
    ids = loaded.tokenize(tf.constant([SEEN])).numpy()[0]
    assert list(ids[: len(tokenizer.encode(SEEN))]) == list(tokenizer.encode(SEEN))
    assert loaded.detokenize(tf.constant([tokenizer.encode(SEEN)])).numpy()[0].decode("utf-8") == tokenizer.decode(tokenizer.encode(SEEN))


def test_tokenizer_files_of_kerasllm_0_1_still_load(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps({"level": "char", "vocabulary": ["[UNK]", " ", "a", "b"]}))
    old = Tokenizer.load(tmp_path)
    assert old.kind == "char" and old.unk_id == 0 and list(old.encode("ab c")) == [2, 3, 1, 0]
    assert old.decode([2, 0, 3]) == f"a{REPLACEMENT}b" and old.never_generated() == [0]
    (tmp_path / "tokenizer.json").write_text(json.dumps({"level": "word", "vocabulary": ["[UNK]", "the", " "]}))
    assert list(Tokenizer.load(tmp_path).encode("the cat")) == [1, 2, 0]


def test_word_vocabulary_is_capped_and_fitting_checks_its_arguments():
    text = "the cat sat on the mat, the end.\n"
    assert Tokenizer.fit(text, "word", 6).vocab_size == 6
    with pytest.raises(UserError, match="unknown tokenizer"):
        Tokenizer.fit(text, "bytes", 100)
    with pytest.raises(UserError, match="leaves no room"):
        Tokenizer.fit(text, "char", 4)


def test_wordpiece_splits_rare_words_into_known_pieces():
    tokenizer = Tokenizer.fit(TRAIN, "wordpiece", 400)
    pieces = [tokenizer.vocabulary[i] for i in tokenizer.encode("unconditionally")]
    assert len(pieces) > 1 and all(p.startswith("##") for p in pieces[1:])
    assert np.all(tokenizer.encode("unconditionally") != tokenizer.unk_id)
