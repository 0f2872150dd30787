package app

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/rs/zerolog"
)

// notifyHUP starts catching SIGHUP, before the worker is reachable: a
// SIGHUP that arrived before would otherwise end the process.
func notifyHUP() (<-chan os.Signal, func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	return hup, func() { signal.Stop(hup) }
}

// ignoreHUP answers SIGHUP in the development mode, where there is no key
// set file to reload.
func ignoreHUP(ctx context.Context, hup <-chan os.Signal, log zerolog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			log.Info().Msg("SIGHUP: nothing to reload in the development mode (the development key stays); use SIGINT or SIGTERM to stop")
		}
	}
}
