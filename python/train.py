"""Front end: ``python python/train.py ...`` == ``python -m tsloss_cuda.train ...``."""
import sys

from tsloss_cuda.train import main

if __name__ == "__main__":
    sys.exit(main())
