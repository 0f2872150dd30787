// Command revoke is an example of a service removing a passkey with the
// client package: say, the account-security service that revokes a
// passkey reported stolen. It keeps one Nats-Msg-Id per revocation (the
// report's id), so that running it again for the same report, after a
// crash or a timeout, never removes twice and prints the first answer.
//
//	go run ./examples/revoke --nats-url nats://127.0.0.1:4222 --token-file admin.tok \
//	    --report incident-42 u1 pk-1
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/passkeys/worker/client"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "revoke:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("revoke", flag.ContinueOnError)
	url := fs.String("nats-url", nats.DefaultURL, "NATS server URL")
	inbox := fs.String("inbox-prefix", "", "this service's inbox prefix (_INBOX_<user> with the shipped nats.conf)")
	tokenFile := fs.String("token-file", "", "file holding an administrator's bearer token")
	report := fs.String("report", "", "the report's id: the removal's idempotency key")
	timeout := fs.Duration("timeout", 30*time.Second, "how long to keep asking")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 2 || *report == "" || *tokenFile == "" {
		return errors.New("usage: revoke --token-file F --report ID USER_ID PASSKEY_ID")
	}
	token, err := os.ReadFile(*tokenFile)
	if err != nil {
		return err
	}
	var opts []nats.Option
	if *inbox != "" {
		opts = append(opts, nats.CustomInboxPrefix(*inbox))
	}
	nc, err := nats.Connect(*url, opts...)
	if err != nil {
		return err
	}
	defer nc.Close()

	c := client.New(nc, client.WithToken(strings.TrimSpace(string(token))))
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	userID, passkeyID := fs.Arg(0), fs.Arg(1)
	// A stolen passkey goes even if it is the user's last way to log in:
	// the user recovers through the help desk, the thief does not get in.
	d, err := c.Remove(ctx, userID, passkeyID, client.Force(), client.MsgID("report-"+*report))
	switch {
	case errors.Is(err, client.ErrPasskeyNotFound):
		fmt.Fprintf(stdout, "%s: passkey %s is not there (removed before this report)\n", userID, passkeyID)
		return nil
	case err != nil:
		return err
	}
	fmt.Fprintf(stdout, "%s: passkey %s removed (user sequence %d, at %s)\n", userID, passkeyID, d.Sequence, d.ChangeDate.Format(time.RFC3339))
	return nil
}
