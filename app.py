"""Rich Human Feedback Studio: the Streamlit entry point.

`st.navigation` over the files in app_pages/; the sidebar dataset settings are drawn here, before
the page runs, so every page shares them (and the `?ds=` deep link).

The page folder is not called `pages/` on purpose: Streamlit treats a `pages/` folder beside the
entry script as its older multipage mode, and then the first request of a fresh server to a page
URL (a deep link) runs that page alone, without this shell or `st.navigation`.
"""

import streamlit as st

from ui.settings import dataset_settings, generator_settings, predictor_settings

st.set_page_config(page_title="Rich Human Feedback Studio", page_icon=":material/search_insights:", layout="wide")

pages = [
    st.Page("app_pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("app_pages/explorer.py", title="Dataset explorer", icon=":material/photo_library:"),
    st.Page("app_pages/live_rahf.py", title="Live RAHF", icon=":material/center_focus_strong:"),
    st.Page("app_pages/annotate.py", title="Annotate", icon=":material/edit:"),
    st.Page("app_pages/lee.py", title="Ways to spend a reward", icon=":material/compare:"),
    st.Page("app_pages/repair.py", title="Inpainting repair", icon=":material/healing:"),
]
page = st.navigation(pages)
dataset_settings()
predictor_settings()
generator_settings()
page.run()
