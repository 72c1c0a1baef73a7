"""Pipeline definition (pipeline.py), its knobs (configs.py) and thin runners."""
