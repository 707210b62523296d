"""File handling: checkpoints (one loader, `weights_only`), images (8/16-bit, EXIF), downloads (resumable,
verified), YAML, the authors' released weights, and writes that never leave a half-written file.

May import `models` (a checkpoint describes a network) and `utils.errors`; nothing else of the repository.
"""
