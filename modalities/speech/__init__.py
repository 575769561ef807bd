"""Speech modality: Whisper-style sequence-to-sequence speech recognition."""
