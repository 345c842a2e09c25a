"""``python -m brainldm.studio [--port P] [--host H] [--model BUNDLE] [--synth-model SYNTH_BUNDLE]`` (same as
``brainldm studio``)."""

import sys

from brainldm.cli import main

if __name__ == "__main__":
    sys.exit(main(["studio", *sys.argv[1:]]))
