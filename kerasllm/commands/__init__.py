"""The command line's rooms: one module per group of commands, each a thin layer over one wing.

`common` holds what every command shares (the consoles, the options declared once, the one-line error handling);
`models` lists and describes the zoo (list, info, doctor, download); `training` trains and fine-tunes (train, finetune,
through `kerasllm.recipes`); `using` evaluates, generates and predicts with a run (through its task); `exporting`
exports and compresses (`kerasllm.export`, `kerasllm.recipes`); `serving` chats and serves (`kerasllm.serve`).
`cli.py` at the top wires them into one Typer app. Nothing here imports TensorFlow at import time.
"""
