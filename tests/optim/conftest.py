"""Makes the shared model of these tests (mtl_model.py) importable."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
