# The one compiled module of the project (edge_runtime._kernels, the device controller's inner loops), built by
# `pip install -e .`; all metadata is in pyproject.toml.
from setuptools import Extension, setup

setup(ext_modules=[Extension("edge_runtime._kernels", ["edge_runtime/_kernels.c"], extra_compile_args=["-O2"])])
