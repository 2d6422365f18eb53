"""CSS the app adds to Streamlit's own (applied by app.py on every page)."""

#: While a script runs, every progress bar's moves are animated, and a browser repaints them many times a second: ten
#: tabs waiting in one Chromium used about twice the CPU with them (bench/browser_wait.py), and in a crowd the browser
#: shares the workers' cores. Here a bar jumps to its new value. (Streamlit's running icon, which a 200-ms timer
#: redraws, is not drawn at all: ``ui.hideTopBar`` in .streamlit/config.toml.) Streamlit's fade of stale elements
#: stays: without it one visitor's Generate was slower (its opacity change repainted the page's large charts instead
#: of being composited).
QUIET_WHILE_RUNNING = "<style>[data-testid='stProgress'] * {transition: none !important; animation: none !important;}</style>"
