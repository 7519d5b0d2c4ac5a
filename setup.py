"""The one compiled part: connectors/postgres/_copytext.c (metadata and dependencies are in setup.cfg).

Optional: without a C compiler the build goes on, and the pure Python code in copytext.py does the same work.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("connectors.postgres._copytext", ["connectors/postgres/_copytext.c"], optional=True)])
