"""``python -m fvae``: the ``fvae`` command, for when the virtual environment's ``bin`` is not on PATH."""
from fvae.cli import run

run()
