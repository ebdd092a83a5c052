"""Entry point for torchrun: `python -m edgederm.training` == `edgederm train`."""
import sys

from edgederm.cli import app

if __name__ == "__main__":
    app(["train", *sys.argv[1:]], prog_name="python -m edgederm.training")
