"""Run fvae from a checkout without installing: ``python cli.py --help``."""
from fvae.cli import run

run()
