"""The diffusers engine: open video models (Wan, LTX-Video) on a GPU.

`options` (the models-file keys and what a model can do) is light and imported by the API process;
`engine`, `pipelines` and `frames` import torch and diffusers and run in render workers only.
"""
