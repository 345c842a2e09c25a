"""BrainLDM Studio: the Slicer modules' workflows in the browser (``brainldm studio``).

A trame-slicer app on Slicer's own MRML core; it needs ``pip install 'brainldm[studio]'``.
``session`` holds the scene-side glue to ``brainldm.logic`` (no trame), ``views`` the view
layout, ``app`` the trame application. Importing this package imports neither.
"""
