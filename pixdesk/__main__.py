import sys

from pixdesk.cli import main

sys.exit(main())
