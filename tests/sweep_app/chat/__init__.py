"""A small chat app on llama-cpp-python, written for the fault sweep's tests (see
``assistant``): three bugs found in real apps, each behind ``fixed=False``."""

from chat.assistant import BUSY, SORRY, TOO_LONG, Assistant, Reply

__all__ = ["BUSY", "SORRY", "TOO_LONG", "Assistant", "Reply"]
