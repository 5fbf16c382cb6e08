import sys

from popd.cli import main

sys.exit(main())
