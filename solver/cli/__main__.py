"""`python -m melange.solver.cli`: the `melange` command without the console script."""
import sys

from melange.solver.cli.main import main

sys.exit(main())
