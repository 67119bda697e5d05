"""Cluster provisioning toolkit: Vagrant nodes, Ansible stages, testinfra verification."""

__version__ = "0.1.0"
