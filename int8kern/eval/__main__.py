"""python -m int8kern.eval: see int8kern.eval.run."""
import sys

from .run import main

sys.exit(main())
