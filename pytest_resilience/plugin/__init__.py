"""The pytest side: hooks and options, fixtures, assertions, hypothesis strategies and the
leak check. Only this package imports pytest."""
