"""The serving side of the app: what lets one machine answer many anonymous visitors at once.

What runs where: the Streamlit server process runs the pages' script threads, which only submit work, wait
and draw. Sampling, trajectories and evaluations go through ``sampling_service`` (a fair first-come,
first-served ``queue``, one request in flight per visitor, identical requests computed once) to sampling
worker processes (``sampling_worker``) at normal priority. The rest of the serving code lives beside the
library modules it wraps: the training job registry (``ddpm.jobs``), the server's limits
(``ddpm.server_limits``), uploads (``ddpm.uploads``) and the precomputed preview (``ddpm.preview``).
"""
