"""`make bench`: capacity of the gateway next to a native-cfg baseline (see bench/run.py)."""
