"""CSS the app adds to Streamlit's own (applied by app.py on every page)."""

#: While a script runs, Streamlit animates a running-man icon in the corner and every progress bar's moves, and a
#: browser repaints them many times a second: ten tabs waiting in one Chromium used about twice the CPU with them
#: (bench/browser_wait.py), and in a crowd the browser shares the workers' cores. Hidden here: the icon (the
#: "Running…" label and the Stop button stay) and the bars' animation (a bar jumps to its new value). Streamlit's
#: fade of stale elements stays: without it one visitor's Generate was slower (its opacity change repainted the
#: page's large charts instead of being composited).
QUIET_WHILE_RUNNING = ("<style>[data-testid='stStatusWidgetRunningManIcon'] {display: none !important;}"
                       " [data-testid='stProgress'] * {transition: none !important; animation: none !important;}</style>")
