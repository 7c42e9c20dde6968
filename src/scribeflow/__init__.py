"""scribeflow: download, transcribe and analyse huge video catalogues within a disk budget."""

__version__ = "0.1.0"
