"""Entry points' runner: `absl.app.run`, except that a help request exits 0.

absl prints the help for --help / --helpshort / --helpfull / -? and then exits with status 1,
which shells, CI and notebooks read as a failure."""
import sys

from absl import app

HELP_FLAGS = ("--help", "--helpshort", "--helpfull", "-?")


def run(main) -> None:
  """`app.run(main)`; exit status 0 after a requested help text."""
  try:
    app.run(main)
  except SystemExit as e:
    if e.code == 1 and any(a.split("=")[0] in HELP_FLAGS for a in sys.argv[1:]):
      sys.exit(0)
    raise
