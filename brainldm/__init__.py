"""BrainLDM: weakly supervised brain tumour detection with latent diffusion.

The package is the bundled core of the BrainLDM 3D Slicer extension. Data flows one
way through its subpackages::

    data -> nets -> diffusion -> detect / synth / sr -> train / evaluate -> logic -> cli

Nothing here imports Slicer or Qt.
"""

__version__ = "0.1.0"
