import sys

from uslearn.cli import main

sys.exit(main())
