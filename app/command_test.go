package app

import (
	"context"
	"io"
	"strings"
	"testing"
)

// A partition count or replica count of 0 on the command line is refused,
// not quietly replaced by the default.
func TestMainRefusesZeroCounts(t *testing.T) {
	for _, c := range []struct{ flag, want string }{
		{"--partitions", "--partitions must be between 1 and 256, not 0"},
		{"--replicas", "--replicas must be between 1 and 5, not 0"},
	} {
		err := Main(context.Background(), []string{"--data-dir", t.TempDir(), "--listen", "127.0.0.1:0", c.flag, "0"},
			func(string) string { return "" }, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s 0: %v, want %q", c.flag, err, c.want)
		}
	}
}
