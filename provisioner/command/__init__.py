"""The commands behind the CLI, one module each. Each stays thin and calls the collaborators: spec,
state, Vagrant, inventory, Ansible runner, verifier."""
