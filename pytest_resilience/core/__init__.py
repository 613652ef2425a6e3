"""The resilience core: retry, breaker, fallback, degradation, streaming guard, clock,
cancellation, errors and events. Nothing here imports pytest, a model runtime or an HTTP
client; the public names are exported lazily from ``pytest_resilience``."""
