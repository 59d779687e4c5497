"""Hydra instantiates launchers only from the `hydra_plugins` namespace: this package registers pantheon's."""
