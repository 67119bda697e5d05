"""Cluster provisioning toolkit: Vagrant nodes, Ansible stages, testinfra verification."""

__version__ = "0.1.0"

from pathlib import Path

# The repository's root: the playbooks, roles, ansible.cfg, Vagrantfile and tests live under it.
REPO_ROOT = Path(__file__).resolve().parent.parent
