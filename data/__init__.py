"""Training data: the DIV2K / LSDIR downloads, LR preparation and caching, patch and validation datasets."""
