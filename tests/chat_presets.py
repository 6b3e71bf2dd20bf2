"""Tiny keras-hub causal-LM presets saved locally (no network here) for chat fine-tuning and serving tests: GPT-2 (no
chat template of its own: the plain one), Llama 3 and Gemma (their families' templates). Their tokenizers cover
every byte, so any text encodes."""

from __future__ import annotations

import io
import json
from pathlib import Path

LAYERS = {"num_layers": 1, "hidden_dim": 16, "intermediate_dim": 32}


def byte_vocabulary(specials: list[str]) -> tuple[dict, list[str]]:
    """A byte-level BPE vocabulary: the specials first, then one token per byte (GPT-2's byte-to-unicode map) and a
    few merges."""
    from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

    _, byte_tokens = bytes_to_unicode()
    vocabulary = {token: i for i, token in enumerate(specials)}
    for token in byte_tokens:
        vocabulary.setdefault(token, len(vocabulary))
    merges = ["Ġ t", "h e", "Ġt he"]
    for merged in ("Ġt", "he", "Ġthe"):
        vocabulary.setdefault(merged, len(vocabulary))
    return vocabulary, merges


def save_chat_presets(folder: Path) -> dict[str, Path]:
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)  # the same weights every time: a tuning test's figures do not hang on the draw
    found = {}
    gpt2 = found["gpt2"] = folder / "gpt2"
    vocabulary, merges = byte_vocabulary(["<|endoftext|>"])
    keras_hub.models.GPT2Backbone(vocabulary_size=len(vocabulary), num_heads=2, max_sequence_length=96, **LAYERS).save_to_preset(str(gpt2))
    keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=merges).save_to_preset(str(gpt2))

    llama = found["llama3"] = folder / "llama3"
    vocabulary, merges = byte_vocabulary(["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                                          "<|eot_id|>"])
    keras_hub.models.Llama3Backbone(vocabulary_size=len(vocabulary), num_query_heads=2, num_key_value_heads=1,
                                    **LAYERS).save_to_preset(str(llama))
    keras_hub.models.Llama3Tokenizer(vocabulary=vocabulary, merges=merges).save_to_preset(str(llama))

    gemma = found["gemma"] = folder / "gemma"
    keras_hub.models.GemmaBackbone(vocabulary_size=300, num_query_heads=2, num_key_value_heads=1, head_dim=8,
                                   **LAYERS).save_to_preset(str(gemma))
    keras_hub.models.GemmaTokenizer(proto=gemma_proto(300)).save_to_preset(str(gemma))
    return found


def gemma_proto(vocabulary_size: int) -> bytes:
    """A SentencePiece model with Gemma's special tokens (<pad> 0, <eos> 1, <bos> 2, <unk> 3, the turn markers) and byte
    fallback."""
    import sentencepiece

    text = ["Hello there, how are you?", "good film, bad film", "The quick brown fox jumps over the lazy dog.",
            "Say hello to Ada.", "Uppercase: keras"] * 20
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(text), model_writer=model, vocab_size=vocabulary_size, model_type="bpe", byte_fallback=True,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>"], add_dummy_prefix=False, normalization_rule_name="identity",
        remove_extra_whitespaces=False, minloglevel=2)
    return model.getvalue()


def write_conversations(path: Path, count: int = 40) -> Path:
    """OpenAI-shape chat data: a system message in some, one or two exchanges."""
    with open(path, "w", encoding="utf-8") as out:
        for i in range(count):
            messages = [{"role": "system", "content": "Be brief."}] if i % 3 == 0 else []
            messages += [{"role": "user", "content": f"Say hello to Ada {i % 5}."}, {"role": "assistant", "content": "Hello, Ada!"}]
            if i % 2:
                messages += [{"role": "user", "content": "Again?"}, {"role": "assistant", "content": "Hello again."}]
            out.write(json.dumps({"messages": messages}) + "\n")
    return path
