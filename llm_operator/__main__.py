"""`python -m llm_operator` is the `llm-operator` command."""

from llm_operator.cli import main

main()
