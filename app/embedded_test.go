package app

import (
	"os"
	"testing"
)

// The embedded server takes nats.conf's limits but not its users, and
// reading it leaves the process's environment as it was.
func TestLoadEmbeddedConfig(t *testing.T) {
	for _, v := range passwordVars {
		if _, ok := os.LookupEnv(v); ok {
			t.Skipf("%s is set in this environment", v)
		}
	}
	opts, err := loadEmbeddedConfig("../nats.conf")
	if err != nil {
		t.Fatal(err)
	}
	if opts.MaxPayload != 1<<20 || opts.JetStreamMaxStore != 10<<30 {
		t.Errorf("limits not taken: max_payload %d, max_file_store %d", opts.MaxPayload, opts.JetStreamMaxStore)
	}
	if !opts.SyncAlways {
		t.Error("sync_interval: always not taken: a power loss would lose what the stream acknowledged")
	}
	if len(opts.Users) != 0 || len(opts.Nkeys) != 0 {
		t.Errorf("users kept: %d", len(opts.Users))
	}
	for _, v := range passwordVars {
		if _, ok := os.LookupEnv(v); ok {
			t.Errorf("%s was set in the process's environment", v)
		}
	}
}
