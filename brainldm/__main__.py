"""``python -m brainldm`` = the ``brainldm`` command (for interpreters where the script is not on PATH)."""

import sys

from brainldm.cli import main

sys.exit(main())
