import sys

from mpcache.programs.cli import main

sys.exit(main())
