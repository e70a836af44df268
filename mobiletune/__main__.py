"""`python -m mobiletune` runs the command-line tool."""

from mobiletune.cli import main

main()
