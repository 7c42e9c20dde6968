"""What a run is told: the settings (settings.py, checked against schema.yaml), where every
file lives (layout.py), the catalogue of episodes (catalogue.py), and what a Whisper model
setting may name (models.py). Imports nothing else of the package but files.py and
integration/."""
