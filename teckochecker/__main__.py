import sys

from teckochecker.cli.main import main

sys.exit(main())
