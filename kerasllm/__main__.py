"""`python -m kerasllm …` runs the command line, as `kerasllm …` does."""

from cli import main

main()
