import sys

from mpcache.cli import main

sys.exit(main())
