"""`python -m kerasllm …` runs the command line, as `kerasllm …` does."""

from kerasllm.cli import main

main()
