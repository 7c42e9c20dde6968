"""Transcription with faster-whisper: model.py loads the model, language.py votes on the
episode's language, decode.py runs the model, hallucination.py guards the result,
transcript.py writes and reads the files, worker.py keeps one model loaded for many jobs."""
