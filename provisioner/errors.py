"""The one exception type that library code raises and the CLI turns into a message and exit code."""

from __future__ import annotations


class ProvisionError(Exception):
    """A failure the user can act on: `message` is one sentence naming the problem and the fix."""

    def __init__(
        self, message: str, exit_code: int = 1, log_path: str | None = None, hosts: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.log_path = log_path
        # The inventory hosts that failed, when the error comes from an Ansible stage.
        self.hosts = hosts

    def __str__(self) -> str:
        if self.log_path:
            return f"{self.message} (log: {self.log_path})"
        return self.message


class SpecError(ProvisionError):
    """The cluster spec is invalid; nothing has been created."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=2)


class ToolMissing(ProvisionError):
    """A required external tool is absent or not answering."""

    def __init__(self, tool: str, fix: str) -> None:
        super().__init__(f"{tool} is required but not available; {fix}", exit_code=3)
