// Command worker removes passkeys: it consumes removal and sync commands
// from the PASSKEYS JetStream stream and serves the passkeys micro service.
// See docs/contract.md for the wire contract and README.md for use.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/passkeys/worker/app"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		stop()
		os.Exit(2)
	}
}

// run runs the worker's command line until ctx ends; tests call it directly.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	return app.Main(ctx, args, getenv, stdout, stderr)
}
