import sys

from streamfer.video.cli import main

sys.exit(main())
