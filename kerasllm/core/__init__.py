"""The ground floor every other wing stands on: user errors (`errors`), run-folder names and atomic writes (`files`),
the typed config and its one resolve (`config`), the names a key may take and the check of a whole
config (`validation`), the registries (`registry`) and a model's `ModelSpec` (`spec`), every
private or version-dependent library API in one place (`compat`), quiet library start-up and the log a run keeps
(`quiet`), network checks that fail in seconds (`network`), signal handling (`interrupts`) and plural words (`words`).
Nothing here imports another kerasllm wing, and nothing here imports TensorFlow at import time.
"""
