import sys

from sonicgate.cli import main

sys.exit(main())
