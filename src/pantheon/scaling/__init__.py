"""Scaling experiments: the FSDP strategy, the sweep harness, its results table and plots, and the
alpha-beta communication model that extrapolates a measured step past this machine (docs/scaling.md)."""
