"""stecache: frozen video encoders once into a feature cache, STE classifier heads trained from it."""

__version__ = "0.1.0"
