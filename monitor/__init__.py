"""apiwatch: which machines talk to which LLM API, from which egress country, against whose policy."""

__version__ = "0.1.0"
