package app

import (
	"context"
	"io"
	"strings"
	"testing"
)

// A partition count or replica count of 0 on the command line is refused,
// not quietly replaced by the default; so is a mechanism --without does not
// know.
func TestMainRefusesZeroCounts(t *testing.T) {
	for _, c := range []struct{ flag, value, want string }{
		{"--partitions", "0", "--partitions must be between 1 and 256, not 0"},
		{"--replicas", "0", "--replicas must be between 1 and 5, not 0"},
		{"--without", "early-answers,leases", `"leases" is none of early-answers`},
	} {
		err := Main(context.Background(), []string{"--data-dir", t.TempDir(), "--listen", "127.0.0.1:0", c.flag, c.value},
			func(string) string { return "" }, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s 0: %v, want %q", c.flag, err, c.want)
		}
	}
}
