"""`python -m eve_vlm.train {train,init-vision,plot} ...`: the same commands as `eve`, for torchrun -m."""

import argparse
import sys

from ..errors import EveError
from .cli import add_commands

parser = argparse.ArgumentParser(prog="python -m eve_vlm.train")
add_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
args = parser.parse_args()
try:
    args.handler(args)
except EveError as e:
    sys.exit(f"eve: error: {e}")
