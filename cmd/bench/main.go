// Command bench measures the passkeys worker: throughput and latency of an
// embedded worker (or of the worker behind --nats-url) beside the storage
// layer alone. It is its own command so that publisher, the tool people
// use, links no NATS server and no store (package bench).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/passkeys/worker/bench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := bench.Run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
