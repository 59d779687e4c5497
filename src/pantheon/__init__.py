"""pantheon: Hydra-configured Lightning training of generative models, from a workstation to SLURM."""

__version__ = "0.1.0"
