"""Exporters: what a journal's events say, sent on to a monitoring system.

Each exporter is a module of its own with its client library as an optional extra, imported
only when that module is (``pytest_resilience.export.prometheus``, the ``prometheus``
extra). This package imports none of them: importing it costs nothing.
"""
