"""Front end: ``python python/analyze.py DIR`` == ``python -m tsloss_cuda.analyze DIR``."""
import sys

from tsloss_cuda.analyze import main

if __name__ == "__main__":
    sys.exit(main())
