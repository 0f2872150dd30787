package chaos

import (
	"bufio"
	"net"
	"testing"
	"time"
)

// echo is a TCP server that sends every line back.
func echo(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := c.Write([]byte(line)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// ask sends a line through c and says what came back within wait ("" for
// nothing, or a closed connection).
func ask(c net.Conn, line string, wait time.Duration) string {
	_ = c.SetDeadline(time.Now().Add(wait))
	if _, err := c.Write([]byte(line + "\n")); err != nil {
		return ""
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return ""
	}
	return got[:len(got)-1]
}

// A cut lets no byte through either way while the connection stays open;
// the heal closes what crossed the cut, and a new connection passes.
func TestProxyCutAndHeal(t *testing.T) {
	p, err := newProxy(echo(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := ask(c, "before", 5*time.Second); got != "before" {
		t.Fatalf("before the cut: %q", got)
	}
	p.Cut()
	if got := ask(c, "during", 300*time.Millisecond); got != "" {
		t.Fatalf("during the cut the echo came back: %q", got)
	}
	p.Heal()
	if got := ask(c, "after", 5*time.Second); got != "" {
		t.Fatalf("a connection across the cut still passes after the heal: %q", got)
	}
	c2, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if got := ask(c2, "again", 5*time.Second); got != "again" {
		t.Fatalf("a new connection after the heal: %q", got)
	}
}
