"""`python -m edgederm`: the same command line as the `edgederm` script."""
from edgederm.cli import main

main()
