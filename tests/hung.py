"""How long a test waits on a child process before it calls the child hung.

`make test` runs the tests without servers at nice 19 beside the server lane (Makefile). While a
server imports or computes it takes both cores, and the fast lane's children then get a sliver of
a core: a child that needs 40 CPU-seconds can take ten minutes on the wall. CI failed on exactly
that with limits of 60 and 300 s. So a wait on a child only guards against a hang: long enough for
any starvation the suite makes, short enough that a hang ends CI's run with a failure naming it.
"""

HUNG_AFTER_S = 1800
