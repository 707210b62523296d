"""LKDN inside other applications' loaders (spandrel, which chaiNNer and ComfyUI use)."""
