"""kerasllm: a Keras 3 model zoo and command line for language and vision models.

Importing the package is cheap: TensorFlow is imported only by the modules that train,
evaluate, generate or export.
"""

from importlib import metadata

try:
    __version__ = metadata.version("kerasllm")
except metadata.PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
