"""subswitch's benchmark suite: ``python -m bench`` (``make bench``).

Every scenario runs subswitch and a baseline side by side, in the same run, against
the simulator (20 ms upstream latency unless stated) with Redis as broker and store
(db 11, flushed before each scenario). Results go to ``bench/results/latest.md``
(a table) and ``bench/results/latest.json`` (the raw numbers).
"""
