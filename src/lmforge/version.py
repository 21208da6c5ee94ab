"""The version of lmforge, at the bottom of the import graph: any module may import it."""

__version__ = "0.1.0"
