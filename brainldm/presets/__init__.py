"""Training presets (YAML), loaded by :func:`brainldm.train.config.load_config`."""
