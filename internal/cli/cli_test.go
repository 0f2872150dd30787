package cli

import (
	"flag"
	"io"
	"reflect"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	for _, tt := range []struct {
		name    string
		args    []string
		env     map[string]string
		fromEnv func(string) bool
		force   bool
		url     string
		timeout time.Duration
		pos     []string
	}{
		{"FlagsFirst", []string{"--force", "u1", "pk-1"}, nil, nil, true, "def", time.Second, []string{"u1", "pk-1"}},
		{"FlagsAfter", []string{"u1", "pk-1", "--force", "--nats-url", "x"}, nil, nil, true, "x", time.Second, []string{"u1", "pk-1"}},
		{"DoubleDash", []string{"u1", "--", "--force"}, nil, nil, false, "def", time.Second, []string{"u1", "--force"}},
		{"Environment", []string{"u1"}, map[string]string{"PASSKEYS_NATS_URL": "env", "PASSKEYS_TIMEOUT": "3s"}, nil, false, "env", 3 * time.Second, []string{"u1"}},
		{"CommandLineWins", []string{"--nats-url", "cli"}, map[string]string{"PASSKEYS_NATS_URL": "env"}, nil, false, "cli", time.Second, nil},
		{"OnlyChosenFromEnvironment", nil, map[string]string{"PASSKEYS_FORCE": "true", "PASSKEYS_NATS_URL": "env"},
			func(n string) bool { return n == "nats-url" }, false, "env", time.Second, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fs := flag.NewFlagSet("t", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			force := fs.Bool("force", false, "")
			url := fs.String("nats-url", "def", "")
			timeout := fs.Duration("timeout", time.Second, "")
			pos, err := Parse(fs, tt.args, func(k string) string { return tt.env[k] }, tt.fromEnv)
			if err != nil {
				t.Fatal(err)
			}
			if *force != tt.force || *url != tt.url || *timeout != tt.timeout || !reflect.DeepEqual(pos, tt.pos) {
				t.Fatalf("force %v url %q timeout %s args %q", *force, *url, *timeout, pos)
			}
		})
	}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.Int("max-batch", 1, "")
	if _, err := Parse(fs, nil, func(string) string { return "many" }, nil); err == nil || err.Error() == "" {
		t.Fatal("a bad value in the environment was accepted")
	}
}
