"""`python -m monitor` is the same as the `apiwatch` console command."""

from monitor.cli import main

main(prog_name="apiwatch")
