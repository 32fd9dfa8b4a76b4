"""Leaf package: settings, domain errors, clocks and canonical JSON. Imports nothing of Bastion."""
