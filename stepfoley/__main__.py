import sys

from stepfoley.cli import main

sys.exit(main())
