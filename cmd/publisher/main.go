// Command publisher talks to the passkeys worker the way a calling service
// or an operator would (package publisher).
package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/passkeys/worker/publisher"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is the publisher's command line; tests call it directly.
func run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	return publisher.Run(ctx, args, getenv, stdin, stdout, stderr)
}
