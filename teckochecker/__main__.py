import sys

from teckochecker.cli import main

sys.exit(main())
