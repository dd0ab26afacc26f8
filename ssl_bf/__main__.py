"""`python -m ssl_bf COMMAND ...`: the `ssl-bf` command (e.g. under `torchrun -m ssl_bf embed ...`)."""
import sys

from .cli import main

sys.exit(main())
