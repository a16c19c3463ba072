# Puma's settings under preforkd (puma reads config/puma.rb by default; this one is named with
# -C). Each preforkd worker is one Puma in single mode: preforkd makes the pool.
workers 0
threads 4, 4
# Serve exactly the sockets from LISTEN_FDS (Puma reads them when LISTEN_PID is its own pid);
# without this, Puma would also bind its default tcp://0.0.0.0:9292.
bind_to_activated_sockets 'only'
# On SIGTERM Puma stops accepting and finishes the requests in flight, then re-raises
# SIGTERM and dies of it; exit 0 instead.
raise_exception_on_sigterm false
# No request queueing and so no keep-alive: every answer closes its connection. With Puma's
# default (queueing, keep-alive), a stop closes the idle keep-alive connections at once, racing
# clients that are sending their next request on them: see README.md for what that loses.
queue_requests false
# Requests in flight get this long on a stop; preforkd's stop_timeout is longer.
force_shutdown_after 25
