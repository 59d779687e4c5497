"""pantheon's submitit launchers, declared where Hydra looks for plugins (it refuses launcher classes from any
other package). The logic, the pre-submit checks and container support, lives in pantheon.cluster.launcher;
configs/hydra/launcher/submitit_{slurm,local}.yaml select these classes."""

from pantheon.cluster import launcher


class SlurmLauncher(launcher.SlurmLauncher):
    __doc__ = launcher.SlurmLauncher.__doc__


class LocalLauncher(launcher.LocalLauncher):
    __doc__ = launcher.LocalLauncher.__doc__
