import sys

from dispatchcount.cli import main

sys.exit(main())
