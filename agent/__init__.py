"""envagent: the field agent of an environmental monitoring network."""

__version__ = "0.1.0"
