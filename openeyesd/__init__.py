"""openeyesd: a service that opens closed eyes in studio photos."""

__version__ = "0.1.0"
