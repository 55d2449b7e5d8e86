"""flowtts: the core library of the platform (model, audio, text, checkpoints, synthesis).

Pure torch + numpy: nothing here imports Ray, and nothing happens at import time.
"""

__version__ = "0.1.0"
