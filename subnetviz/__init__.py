"""subnetviz: visual analysis of subnetworks in language models.

The package is a library first: everything here works from a notebook or the CLI without
Streamlit. Only :mod:`subnetviz.ui` imports streamlit.
"""

__version__ = "0.1.0"
