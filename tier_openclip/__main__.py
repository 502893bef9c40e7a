import sys

from tier_openclip.cli import main

sys.exit(main())
