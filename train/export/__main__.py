import sys

from train.export.cli import main
from train.progress import run_cli

# run_cli: a job of the Train tab ("Export for CPU") reads how it went from its progress file.
run_cli(lambda: sys.exit(main()), ())
