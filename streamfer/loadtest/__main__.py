"""`python -m streamfer.loadtest`"""

import sys

from streamfer.loadtest.cli import main

sys.exit(main())
