import sys

from tier_openclip.commands.cli import main

sys.exit(main())
