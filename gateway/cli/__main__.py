import sys

from consentry.gateway.cli import main

sys.exit(main())
