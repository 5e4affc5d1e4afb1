import sys

from .smollm2 import main

sys.exit(main())
