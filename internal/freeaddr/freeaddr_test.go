package freeaddr

import (
	"net"
	"strconv"
	"testing"
)

// Every address is below the ephemeral range, free to listen on, and
// handed out once.
func TestLoopback(t *testing.T) {
	seen := map[string]bool{}
	for range 50 {
		addr, err := Loopback()
		if err != nil {
			t.Fatal(err)
		}
		_, port, _ := net.SplitHostPort(addr)
		if p, _ := strconv.Atoi(port); p < lowest || p >= 32768 {
			t.Errorf("port %d, want one in [%d, 32768)", p, lowest)
		}
		if seen[addr] {
			t.Errorf("%s handed out twice", addr)
		}
		seen[addr] = true
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("listen on %s: %v", addr, err)
		}
		_ = l.Close()
	}
}
