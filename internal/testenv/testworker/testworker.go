// Package testworker runs a worker in a test's own process, through
// app.Run, as tests that talk to it only over NATS need one. (Apart from
// testenv, which packages the worker is made of import in their own tests.)
package testworker

import (
	"context"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/passkeys/worker/app"
	"github.com/passkeys/worker/command"
	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/runner"
	"github.com/passkeys/worker/topology"
)

// Config is a worker on the NATS server at natsURL, trusting keys' JWKS
// with the test issuer and audience, on data directory dir, with 2
// partitions (fewer to load than the default 8).
func Config(natsURL string, keys *testenv.Keys, dir string) app.Config {
	return app.Config{NATSURL: natsURL, JWKS: keys.JWKSPath, Issuer: testenv.Issuer, Audience: testenv.Audience, DataDir: dir,
		Settings: topology.Settings{Retention: command.DefaultRetention, DuplicateWindow: 2 * time.Minute, Partitions: 2},
		Options:  runner.Options{MaxBatch: 64}, CreateStream: true, OutcomeWait: 10 * time.Second}
}

// Start runs a worker with cfg until stop or the test's end, and returns
// once it serves, with the URL clients reach NATS at (the embedded
// server's, without cfg.NATSURL).
func Start(tb testing.TB, cfg app.Config) (url string, stop func()) {
	tb.Helper()
	log, err := app.NewLogger(io.Discard, app.LogJSON, "warn", "passkeys-worker")
	if err != nil {
		tb.Fatal(err)
	}
	started, stopped := make(chan string, 1), make(chan struct{})
	cfg.Started = func(url string) { started <- url }
	ctx, cancel := context.WithCancel(context.Background())
	var runErr error
	go func() { runErr = app.Run(ctx, cfg, log); close(stopped) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-stopped }) }
	tb.Cleanup(stop)
	select {
	case url = <-started:
		return url, stop
	case <-stopped:
		tb.Fatalf("worker: %v", runErr)
		return "", stop
	}
}
