"""Composition root: the combined server and the ``bastion`` command."""
