"""The use cases every front end calls (CLI, Slicer modules, browser studio).

``catalogue`` (which models exist) is pure Python and re-exported here; the MRML adapters
(``mrml``) and the Slicer use cases (``segment``, ``train``, ``synth``) need Slicer's MRML core
and are imported explicitly; ``worker`` is the child process that runs detection.
"""

from brainldm.logic.catalogue import model_catalogue, register_model, resolve_model  # noqa: F401
