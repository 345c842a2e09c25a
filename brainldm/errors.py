"""User-facing errors.

Every error a user can cause (bad files, wrong options, a corrupt model) is raised as a
:class:`BrainLDMError` subclass whose message says what went wrong *and* what to do.
The command line prints these without a traceback; anything else is a bug.
"""


class BrainLDMError(Exception):
    """An error caused by input or settings, with a message meant for the user."""


class InputDataError(BrainLDMError):
    """Image files are missing, unreadable, inconsistent or unusable."""


class ModelBundleError(BrainLDMError):
    """A model bundle is missing, incomplete, corrupt or incompatible."""


class SettingsError(BrainLDMError):
    """An option or configuration value is out of range or inconsistent."""
