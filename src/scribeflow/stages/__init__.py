"""The pipeline's stages, in the order an episode meets them: download.py, media.py (the
audio), transcription/ (model, language vote, decoding, the hallucination guard, the
transcript files, the long-lived worker), tokens.py, analysis.py; steps.py is what each
Snakemake rule's script calls."""
