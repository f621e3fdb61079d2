"""Wire layer: Python stubs generated from protos/ (by `make proto`) and the numpy <-> tensor codec."""
