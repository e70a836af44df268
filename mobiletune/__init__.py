"""mobiletune: adapt a pretrained MobileNet to your own images.

Only the version lives here, so that `mobiletune --help` never imports torch.
"""

__version__ = "0.1.0"
