"""The lowest layer: atomic writes and safe reads (`io`), typed configs from YAML with checked
overrides (`typed`), stop signals and the run folder's lock (`faults`), naming the machine
(`machine`) and process groups (`distributed`)."""
