"""reelq: a self-hosted, Vidu-compatible asynchronous video-generation API."""

__version__ = "0.1.0"
