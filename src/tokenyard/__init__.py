"""tokenyard: a Kubernetes operator for multi-model LLM serving."""

__version__ = "0.1.0"
