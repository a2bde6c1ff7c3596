"""The parser: backbones, the ``cnn`` / ``graph_lstm`` / ``se_lstm`` model built from one config, and its loss."""
