"""`python -m llm_backbones ...` (and `torchrun -m llm_backbones ...`): the `llm-backbones` command."""

from llm_backbones.app.cli import app

if __name__ == "__main__":
    app()
