"""The command line as ``python -m prodbug``."""

from prodbug.cli import main

raise SystemExit(main())
