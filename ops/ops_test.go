package ops

import (
	"net/http"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// The HTTP server bounds every phase of a request, idle connections and
// header size: an idle or slow client cannot keep a connection, and so a
// file descriptor, for ever.
func TestHTTPServerIsBounded(t *testing.T) {
	srv := newHTTPServer(http.NewServeMux(), zerolog.Nop())
	for name, d := range map[string]time.Duration{
		"ReadHeaderTimeout": srv.ReadHeaderTimeout, "ReadTimeout": srv.ReadTimeout,
		"WriteTimeout": srv.WriteTimeout, "IdleTimeout": srv.IdleTimeout,
	} {
		if d <= 0 || d > time.Minute {
			t.Errorf("%s = %s, want a bound of at most a minute", name, d)
		}
	}
	if srv.MaxHeaderBytes <= 0 || srv.MaxHeaderBytes > 64<<10 {
		t.Errorf("MaxHeaderBytes = %d", srv.MaxHeaderBytes)
	}
	if maxHTTPConns <= 0 || maxHTTPConns > 1024 {
		t.Errorf("maxHTTPConns = %d", maxHTTPConns)
	}
}
