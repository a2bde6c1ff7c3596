"""selab: Structure-evolving LSTM and Graph LSTM for semantic object parsing."""

__version__ = "0.1.0"
