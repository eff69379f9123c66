"""Streamlit glue shared by the pages: cached loaders, sidebar settings and small render helpers.

Pages are thin scripts over `rhf_core`; this package is the only place besides `app_pages/` and
`app.py` that imports streamlit.
"""
