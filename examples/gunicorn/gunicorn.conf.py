# gunicorn reads ./gunicorn.conf.py by default. Under preforkd, each preforkd worker is one
# gunicorn (an arbiter and its one worker process): preforkd makes the pool.
workers = 1
# Load the app in the arbiter before it says READY=1 (gunicorn's only sd_notify message, sent
# when the arbiter has booted): the READY=1 preforkd hears then comes after the import.
preload_app = True
# No bind: gunicorn takes the socket at fd 3 from LISTEN_FDS when LISTEN_PID is its own pid
# (gunicorn/systemd.py). A bind of fd://3 as well would open it twice and crash-loop.
# gunicorn 24 and later open a control socket at $XDG_RUNTIME_DIR/gunicorn.ctl (or
# ~/.gunicorn/gunicorn.ctl), which every gunicorn of the pool would share: none here.
# (Older gunicorn ignores this setting.)
control_socket_disable = True
# A request may take this long to finish on a stop; preforkd's stop_timeout is longer.
graceful_timeout = 30
# Access log off; errors go to stderr, which preforkd passes on (the journal, under systemd).
accesslog = None
