"""Run settings: every setting of every workflow in one `ExperimentConfig` (`settings`); the
machinery that reads typed configs from YAML is `oqat.core.typed`."""
