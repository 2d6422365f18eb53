"""PathMNIST Diffusion Studio: the entry point. Page setup and navigation only; each page is a file in pages/.

Streamlit runs this file as ``__main__``. Every child process of the server imports it again, as ``__mp_main__``
(multiprocessing does so with the main script), where there is nothing to run: not even Streamlit to import."""
if __name__ == "__main__":
    import streamlit as st

    from pages._style import QUIET_WHILE_RUNNING

    st.set_page_config(page_title="PathMNIST Diffusion Studio", page_icon="🔬", layout="wide")
    st.html(QUIET_WHILE_RUNNING)  # no progress-bar animation: see pages/_style.py

    PAGES = [
        st.Page("pages/home.py", title="Home", icon=":material/home:", url_path="home", default=True),
        st.Page("pages/forward.py", title="Forward diffusion", icon=":material/blur_on:", url_path="forward"),
        st.Page("pages/reverse.py", title="Reverse denoising", icon=":material/auto_fix_high:", url_path="reverse"),
        st.Page("pages/steer.py", title="Steer tissue", icon=":material/tune:", url_path="steer"),
        st.Page("pages/train.py", title="Train", icon=":material/model_training:", url_path="train"),
        st.Page("pages/quiz.py", title="Real or generated?", icon=":material/quiz:", url_path="quiz"),
        st.Page("pages/compare.py", title="Compare", icon=":material/compare:", url_path="compare"),
        st.Page("pages/about.py", title="About / model card", icon=":material/info:", url_path="about"),
    ]

    st.navigation(PAGES).run()
