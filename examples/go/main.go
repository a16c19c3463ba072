// A small net/http server, standard library only, that runs under preforkd (or systemd alone).
//
//	GET /            -> "worker=<id> pid=<pid> gen=<generation>"
//	GET /sleep?ms=N  -> answers after N ms (a slow request)
//
// It serves the socket at fd 3 when LISTEN_PID is its own pid, else 127.0.0.1:8080; says
// READY=1 on $NOTIFY_SOCKET once it serves; and drains on SIGTERM.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

// How long keep-alive clients get to send their next request while draining.
const grace = time.Second

// listener returns the socket preforkd (or systemd) passed at fd 3, or binds one itself.
func listener() (net.Listener, error) {
	if os.Getenv("LISTEN_PID") == strconv.Itoa(os.Getpid()) && os.Getenv("LISTEN_FDS") != "" {
		f := os.NewFile(3, "listen-fd-3")
		defer f.Close() // FileListener holds a duplicate
		return net.FileListener(f)
	}
	return net.Listen("tcp", "127.0.0.1:8080")
}

// notify sends one sd_notify(3) datagram to $NOTIFY_SOCKET (Go reads a leading '@' as an
// abstract socket).
func notify(state string) {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		log.Printf("sd_notify: %v", err)
		return
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		log.Printf("sd_notify: %v", err)
	}
}

func main() {
	var draining atomic.Bool
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintf(w, "worker=%s pid=%d gen=%s\n", env("PREFORKD_WORKER_ID"), os.Getpid(), env("PREFORKD_GENERATION"))
	})
	mux.HandleFunc("/sleep", func(w http.ResponseWriter, r *http.Request) {
		ms, err := strconv.Atoi(r.URL.Query().Get("ms"))
		if err != nil {
			ms = 1000
		}
		time.Sleep(time.Duration(ms) * time.Millisecond)
		fmt.Fprintf(w, "slept %dms\n", ms)
	})
	// While draining, every answer closes its connection: the client sends its next request
	// to another worker instead of finding this connection closed under it.
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if draining.Load() {
			w.Header().Set("Connection", "close")
		}
		mux.ServeHTTP(w, r)
	})

	ln, err := listener()
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	notify("READY=1")

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-stop:
	case err := <-served:
		log.Fatal(err)
	}
	// SIGTERM: stop accepting at once (closing our copy of the shared socket); answer what
	// still arrives on open connections for a moment with "Connection: close"; then
	// Shutdown closes the idle connections and waits for the requests in flight. Shutdown
	// alone would close idle keep-alive connections at once, racing a client that is sending
	// its next request on one.
	draining.Store(true)
	notify("STOPPING=1")
	ln.Close()
	time.Sleep(grace)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Printf("shutdown: %v", err)
	}
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
		log.Print(err)
	}
}

func env(name string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return "-"
}
