package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rogpeppe/go-internal/testscript"

	"github.com/passkeys/worker/app"
	"github.com/passkeys/worker/bench"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"publisher": func() {
			os.Exit(run(context.Background(), os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr))
		},
		// bench is cmd/bench's command line.
		"bench": func() {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			code := bench.Run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
			stop()
			os.Exit(code)
		},
		// worker is cmd/worker's command line, so scripts can run the real thing.
		"worker": func() {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			err := app.Main(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
			stop()
			if err != nil {
				fmt.Fprintln(os.Stderr, "worker:", err)
				os.Exit(2)
			}
		},
	})
}

func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Setup: func(env *testscript.Env) error {
			port, err := freePort()
			if err != nil {
				return err
			}
			env.Setenv("LISTEN", fmt.Sprintf("127.0.0.1:%d", port))
			env.Setenv("NATS", fmt.Sprintf("nats://127.0.0.1:%d", port))
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"waitworker": waitWorker,
			// hup sends SIGHUP to the background commands (testscript's kill
			// knows no HUP).
			"hup": func(ts *testscript.TestScript, neg bool, args []string) {
				for _, c := range ts.BackgroundCmds() {
					ts.Check(c.Process.Signal(syscall.SIGHUP))
				}
			},
		},
	})
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitWorker URL waits until the passkeys micro service answers at URL.
func waitWorker(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: waitworker URL")
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		nc, err := nats.Connect(args[0])
		if err == nil {
			_, err = nc.Request("$SRV.PING.passkeys", nil, 500*time.Millisecond)
			nc.Close()
			if err == nil {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	ts.Fatalf("no worker answered at %s", args[0])
}
