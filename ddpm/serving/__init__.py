"""The serving side of the app: what lets one 2-core machine answer a classroom of anonymous visitors at once.

What runs where. The Streamlit server process runs the pages' script threads, which only submit work, wait and
draw. Sampling, trajectories and evaluations are requests (``sampling_worker.SampleRequest``), priced before
they run (``cost``: FLOPs from the model's config, refused beyond the server's budget) and put in one fair line
(``queue``: first come, first served, one request in flight per visitor, identical requests computed once),
which ``sampling_service`` drains into worker processes (two at normal priority, and one for heavy requests at
a lower one while it has work), stopping a request past its deadline or one nobody waits for. Training runs in a
child process at the lowest priority (``train_process``), started, watched and stopped by a thread of the server
(``job_worker``) for the job registry (``jobs``, ``job_state``, ``train_request``). Every child is forked from
one forkserver that imported torch once (``processes``, ``preload``), so they share those pages instead of
each holding its own torch. What a visitor may ask is ``server_limits``; checked uploads are ``uploads``;
samples made ahead of time for a fast first view are ``preview``; finished results are kept per kind in
``result_cache``. The "Real or generated?" quiz draws its generated patches from ``quiz_pool`` (made ahead of
time, refilled through the same line) and keeps each round's answer key, and the answer rate limits, in
``quiz_rounds``. No child process outlives the server: each watches for the server's end.
"""
