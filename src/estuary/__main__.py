import sys

from estuary.cli import main

sys.exit(main())
