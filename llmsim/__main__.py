import sys

from llmsim.entry import main

sys.exit(main())
