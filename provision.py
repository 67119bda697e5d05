#!/usr/bin/env python3
"""Entry point: `python provision.py up --nodes 3`. All logic lives in the provisioner package."""

import sys

from provisioner.cli import main

if __name__ == "__main__":
    sys.exit(main())
