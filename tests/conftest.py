"""The whole suite runs with the plugin's own leak check on (``resilience_leak_check`` in
pyproject.toml): a test that leaves a thread, a file descriptor or a child process behind
fails at teardown with the list of what leaked. Session and module fixtures are set up
before the check starts, so what they hold is not counted; function fixtures are torn down
before it ends. A test that leaks on purpose says so with ``@pytest.mark.no_leak_check``.
"""
