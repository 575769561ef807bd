"""Modality packages (text, vision_language, speech) behind one small interface.

Importing this package imports no torch; each modality's heavy code loads when it is used.
"""
